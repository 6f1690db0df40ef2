"""Layouts are arithmetic on the world size, and impossible ones are refused at compile time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from internlm import registry
from internlm.api import compose
from internlm.planning import to_typed
from internlm.components.strategy.base import ParallelLayout
from internlm.errors import ConfigError


def strategy(*overrides: str):
    return registry.build(to_typed(compose(["strategy=hybrid_zero", *overrides])).strategy)


@pytest.mark.parametrize(
    "world, overrides, expected",
    [
        (16, [], ParallelLayout(replicate=2, shard=8)),  # InternLM's zero1=8 on two 8-GPU nodes
        (4, [], ParallelLayout(replicate=1, shard=4)),  # a group larger than the job is capped
        (8, ["strategy.shard_group_size=-1"], ParallelLayout(replicate=1, shard=8)),
        (8, ["strategy.shard_group_size=1"], ParallelLayout(replicate=8, shard=1)),
        (16, ["strategy.tensor_parallel=2", "strategy.shard_group_size=4"], ParallelLayout(replicate=2, shard=4, tensor=2)),
    ],
)
def test_layout_from_world_size(world, overrides, expected):
    assert strategy(*overrides).layout(world) == expected


def test_fsdp_is_hybrid_zero_sharded_over_every_data_parallel_rank():
    fsdp = registry.build(to_typed(compose(["strategy=fsdp"])).strategy)
    assert fsdp.layout(32) == ParallelLayout(replicate=1, shard=32)


@pytest.mark.parametrize(
    "world, overrides, words",
    [
        (6, ["strategy.tensor_parallel=4"], ["tensor-parallel groups of 4", "1, 2, 3, 6"]),
        (12, ["strategy.shard_group_size=8"], ["12 data-parallel ranks", "shard groups of 8", "1, 2, 3, 4, 6, 12"]),
        (8, ["strategy.shard_group_size=0"], ["shard_group_size must be -1 or >= 1"]),
    ],
)
def test_impossible_layouts_are_refused(world, overrides, words):
    with pytest.raises(ConfigError) as info:
        strategy(*overrides).layout(world)
    assert all(word in info.value.render() for word in words)


@pytest.mark.parametrize(
    "model, tensor, words",
    [
        ("internlm_7b", 3, ["num_heads 32", "tensor_parallel=3"]),
        ("smollm2_135m", 2, ["num_heads 9"]),
        ("smollm2_135m", 3, ["cannot be tied"]),  # 9 and 3 heads split over 3, a tied head does not
        ("smollm2_135m", 1, None),
        ("internlm_7b", 8, None),
    ],
)
def test_the_model_must_split_evenly_over_tensor_parallel_ranks(model, tensor, words):
    config = to_typed(compose(["strategy=hybrid_zero", f"model={model}", f"strategy.tensor_parallel={tensor}"]))
    hybrid = registry.build(config.strategy)
    layout = hybrid.layout(8 * tensor)
    if words is None:
        hybrid.check_model(config.model, layout)
        return
    with pytest.raises(ConfigError) as info:
        hybrid.check_model(config.model, layout)
    assert all(word in info.value.render() for word in words)


def test_a_bad_layout_stops_the_cli_before_any_process_starts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "internlm", "strategy=hybrid_zero", "strategy.shard_group_size=3",
         "trainer.devices=4", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "shard groups of 3" in result.stderr and "Traceback" not in result.stderr
    assert "Initializing distributed" not in result.stderr + result.stdout
