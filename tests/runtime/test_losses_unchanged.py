"""The shared fit loop and the assembly pipeline replaced the pretrain task's own loop: the losses
must be the ones the old code gave, bit for bit (values recorded before the change, on CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from internlm.api import run

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "losses_before_refactor.json").read_text())


def test_one_process_losses_equal_the_recorded_ones(tmp_path, fast_overrides):
    losses = run(fast_overrides + ["trainer.max_steps=12", "trainer.checkpoint_every=0", "data.micro_batch_size=2"], tmp_path)["losses"]
    assert [repr(x) for x in losses] == RECORDED["single_fast_12_steps_micro2"]


def test_two_process_hybrid_zero_losses_equal_the_recorded_ones(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "multiprocess"))
    from launch import launch

    metrics = launch(tmp_path / "run", "strategy=hybrid_zero", "strategy.shard_group_size=2", devices=2)
    got = {str(step): [repr(m["loss"]), repr(m["grad_norm"])] for step, m in metrics.items()}
    assert got == RECORDED["hybrid_zero_2proc_6_steps"]
