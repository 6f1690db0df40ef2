"""Non-finite steps never reach the weights: skipped, counted, rolled back from, or stopped on."""

from __future__ import annotations

import csv
import math

import pytest
import torch

import internlm
from internlm.api import run
from internlm.errors import ConfigError
from internlm.runtime.health import SPIKE_WARMUP, Health


def _metrics(run_dir) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics" / "metrics.csv").open()))


def test_nan_at_three_steps_skips_them_counts_them_and_leaves_the_weights_untouched(tmp_path, fast_overrides):
    overrides = fast_overrides + ["trainer.max_steps=6", "data.micro_batch_size=2", "trainer.loggers=[csv]"]
    clean = run(overrides + ["trainer.checkpoint_every=0"], tmp_path / "clean")["losses"]
    hurt = run(overrides + ["trainer.checkpoint_every=1", "trainer.keep_checkpoints=10", "debug.inject_nan_steps=[2,4,5]"], tmp_path / "nan")
    losses = hurt["losses"]
    assert len(losses) == 6 and [math.isnan(x) for x in losses] == [False, True, False, True, True, False]
    assert losses[0] == clean[0]
    assert float(_metrics(tmp_path / "nan")[-1]["health/skipped_steps"]) == 3.0
    ckpts = tmp_path / "nan" / "checkpoints"

    def weights(step):
        model, _ = internlm.load(ckpts / f"step-{step:08d}")
        return {k: v.clone() for k, v in model.state_dict().items()}

    before, after = weights(3), weights(5)  # steps 4 and 5 were skipped: no update at all
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not all(torch.equal(before[k], weights(6)[k]) for k in before)  # step 6 trained again


def test_too_many_skips_in_a_row_roll_back_to_the_last_good_checkpoint(tmp_path, fast_overrides, caplog):
    overrides = fast_overrides + [
        "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.max_consecutive_skips=2", "debug.inject_nan_steps=[3,4]",
    ]
    losses = run(overrides, tmp_path)["losses"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses[4:])
    assert "rolling back to" in caplog.text and "step-00000002" in caplog.text


def test_too_many_skips_with_nothing_to_roll_back_to_stop_with_one_message(tmp_path, fast_overrides):
    overrides = fast_overrides + ["trainer.max_steps=4", "trainer.checkpoint_every=0", "trainer.max_consecutive_skips=2", "debug.inject_nan_steps=[1,2]"]
    with pytest.raises(ConfigError) as info:
        run(overrides, tmp_path)
    assert "no checkpoint to roll back to" in info.value.render() and "trainer.max_consecutive_skips" in info.value.render()


def test_a_spike_is_reported_against_the_running_mean():
    health = Health(max_consecutive_skips=3, spike_factor=3.0)
    for step in range(SPIKE_WARMUP):
        assert health.judge(step + 1, 2.0, 1.0)
    assert health.judge(11, 5.9, 1.0) and health.spikes == 0  # below 3 x 2.0
    mean = health.mean  # 0.9 * 2.0 + 0.1 * 5.9 = 2.39
    assert mean == pytest.approx(2.39)
    assert health.judge(12, 3.0 * mean + 0.01, 1.0) and health.spikes == 1  # reported, still applied
    assert not health.judge(13, 1.0, float("inf")) and health.skipped == 1 and not health.exhausted()


def _skip_one_step_of_data(ckpt, rows: int) -> None:
    """Move a checkpoint's data position on by one step's rows (a run whose data skips that batch),
    fixing its recorded checksum."""
    import json

    from internlm.runtime import checkpoint

    extras = ckpt / checkpoint.EXTRAS
    saved = torch.load(extras, weights_only=True)
    saved["loader"]["consumed"] += rows
    torch.save(saved, extras)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][checkpoint.EXTRAS] = {"bytes": extras.stat().st_size, "sha256": checkpoint.file_digest(extras)}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_the_steps_around_skipped_ones_equal_a_run_whose_data_skipped_those_batches(tmp_path, fast_overrides):
    """NaN at steps 2 and 4 of 5: steps 1, 3 and 5 are bitwise those of a clean 5-step run (same
    schedule) that trained on batches 1, 3 and 5 only: it stops after each step (trainer.stop_file)
    and its data position is moved past the next batch before it resumes."""
    overrides = fast_overrides + ["data.micro_batch_size=2", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=10",
                                  "trainer.max_steps=5"]
    hurt = run(overrides + ["debug.inject_nan_steps=[2,4]"], tmp_path / "nan")["losses"]
    skipping, stop = tmp_path / "skip", tmp_path / "STOP"
    one_step = overrides + [f"trainer.stop_file={stop}"]
    stop.touch()
    reference = run(one_step, skipping)["losses"]
    for done in (1, 2):  # skip a batch, then train one step on the next
        _skip_one_step_of_data(skipping / "checkpoints" / f"step-{done:08d}", rows=4)
        stop.touch()
        reference += run(one_step + ["trainer.resume=auto"], skipping)["losses"]
    assert [hurt[0], hurt[2], hurt[4]] == reference
    a, _ = internlm.load(tmp_path / "nan" / "checkpoints" / "step-00000005")
    b, _ = internlm.load(skipping / "checkpoints" / "step-00000003")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
