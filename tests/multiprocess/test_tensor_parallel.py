"""Tensor parallel x FSDP (2 x 2 processes) from a meta-device init equals one process.

Both runs create the model on the meta device and initialise it shard by shard; that init is the
same at any world size and mesh, so the 4-process run must reproduce the 1-process run's losses.
"""

from __future__ import annotations

import pytest

from launch import assert_same_run, launch

STEPS = range(1, 7)
META = "strategy.meta_init_above=0"  # every model counts as large

# Tensor-parallel peers hold the same rows: Pretrain.train_step counts them once (divides the
# all-reduced sums by plan.layout.tensor); without that, gradients come out tp times too small.


@pytest.fixture(scope="module")
def meta_reference(runs_dir):
    return launch(runs_dir / "meta1", "strategy=hybrid_zero", META)


@pytest.fixture(scope="module")
def tensor_parallel(runs_dir):
    return launch(runs_dir / "tp2x2", "strategy=fsdp", "strategy.tensor_parallel=2", META, devices=4)


def test_tensor_parallel_2_with_fsdp_2_matches_one_process(tensor_parallel, meta_reference):
    assert_same_run(tensor_parallel, meta_reference, STEPS)


def test_tensor_parallel_gradient_norm_matches_one_process(tensor_parallel, meta_reference):
    assert_same_run(tensor_parallel, meta_reference, STEPS, key="grad_norm")
