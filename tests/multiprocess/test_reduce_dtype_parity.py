"""strategy.reduce_dtype=bf16 (gradients reduce-scattered in bf16, as InternLM reduced them) trains
like the fp32 reduction: the program at 2 and 4 gloo processes under bf16 compute, losses and
gradient norms against the fp32-reduce run.

Tolerance, fixed before the runs: losses within 1e-3 relative and gradient norms within 1e-2 at
every step. A bf16 gradient carries 8 bits of mantissa (relative rounding <= 2^-9 per element);
AdamW's update divides the rounding out to first order, so the losses of a few steps move by
~1e-5 relative (measured: <= 2e-5 over 4 steps) and the norm of the rounded gradient by ~1e-4.
A reduction that summed instead of averaged, or skipped a rank, moves the norm by far more than
1e-2. The runs must also differ somewhere: bf16 rounding that left everything bitwise equal
would mean the reduce dtype did not take effect.
"""

from __future__ import annotations

import math

import pytest

from launch import launch

BF16 = ["strategy=fsdp", "trainer.precision=bf16-mixed", "trainer.max_steps=3", "trainer.checkpoint_every=-1"]
STEPS = (1, 2, 3)


@pytest.fixture(scope="module")
def fp32_reduce_2(runs_dir):
    return launch(runs_dir / "reduce_fp32_2", *BF16, "strategy.reduce_dtype=fp32", devices=2)


def assert_close_runs(ours: dict, reference: dict) -> None:
    for step in STEPS:
        for key, rtol in (("loss", 1e-3), ("grad_norm", 1e-2)):
            assert math.isclose(ours[step][key], reference[step][key], rel_tol=rtol), (step, key, ours[step], reference[step])


@pytest.mark.parametrize("devices", [2, 4])
def test_bf16_reduction_trains_like_fp32(runs_dir, fp32_reduce_2, devices):
    ours = launch(runs_dir / f"reduce_bf16_{devices}", *BF16, "strategy.reduce_dtype=bf16", devices=devices)
    assert_close_runs(ours, fp32_reduce_2)
    assert any(ours[s]["grad_norm"] != fp32_reduce_2[s]["grad_norm"] for s in STEPS)  # bf16 rounding took effect
