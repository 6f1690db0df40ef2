"""fp8 all-gather under FSDP2 (`model.kernels.matmul=fp8_tensorwise` on a sharded run): two gloo
processes with torchao's emulated fp8 casts, the same functions the program calls
(float8.convert_to_float8, parallelize.apply_fsdp, float8.register_scale_precompute).

Gathering a weight in fp8 casts each shard with the scale of the whole weight (its amax,
all-reduced) and gathers the fp8 bytes; gathering in fp32 and casting after gives the same fp8
values. So the two runs must train identically, while each block's gather carries 1 byte per
linear weight instead of 4 (hand-computed from the block's parameter counts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchao", reason="torchao is not installed (pip install 'internlm[fp8]')")

WORKER = Path(__file__).with_name("fp8_all_gather_worker.py")
WORLD = 2


def train(tmp_path: Path, fp8_gather: bool, port: int) -> dict:
    out = tmp_path / f"fp8_gather_{int(fp8_gather)}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    for attempt in (0, 1):  # a gloo start-up rarely aborts: once more on another port
        result = subprocess.run([sys.executable, str(WORKER), str(out), str(port + 10 * attempt), "1" if fp8_gather else "0"],
                                env=env, capture_output=True, text=True, timeout=240)
        if result.returncode == 0 and out.exists():
            return json.loads(out.read_text())
    raise AssertionError(f"the worker failed twice:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp8_gather")
    return train(tmp, False, 29_721), train(tmp, True, 29_741)


def test_fp8_gathers_train_exactly_as_high_precision_gathers(runs):
    plain, fp8 = runs
    assert fp8["losses"] == plain["losses"]  # the same fp8 values, the same arithmetic after: bitwise
    assert fp8["losses"][-1] < fp8["losses"][0]  # it trained
    assert fp8["scale_hook"] and not plain["scale_hook"]  # one amax all-reduce after each step, only for fp8 gathers


def test_each_block_gathers_one_byte_per_linear_weight(runs):
    plain, fp8 = runs
    params, fp8_weights = fp8["block_params"], fp8["block_fp8_weights"]
    fp32_block = 4 * params // WORLD
    fp8_block = (fp8_weights + 4 * (params - fp8_weights)) // WORLD  # norms and biases stay fp32
    assert fp8_weights == 4 * 64 * 64 + 3 * 64 * 128  # q, k, v, o; gate, up, down (hidden 64, ffn 128)
    plain_blocks = [size for dtype, size in plain["gathered"] if size == fp32_block]
    fp8_blocks = [size for dtype, size in fp8["gathered"] if dtype == "torch.uint8" and size == fp8_block]
    assert len(plain_blocks) > 0 and len(fp8_blocks) == len(plain_blocks)
    # the embedding's and the root's gathers are untouched by fp8
    assert sorted(s for s in plain["gathered"] if s[1] != fp32_block) == sorted(s for s in fp8["gathered"] if s[1] != fp8_block)
