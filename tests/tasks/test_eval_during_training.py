"""trainer.eval_every + eval=<suite>: the suite runs inside the fit loop and its metrics land in
metrics.csv and TensorBoard as eval/<dataset>/<metric>, equal to scoring the checkpoint of that
step afterwards; a missing suite or data folder fails before the first step."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from internlm.api import run
from internlm.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parents[1] / "components" / "eval"))
from evalhelpers import DATA, compose_suite  # noqa: E402

FAST = ["data.seq_len=64", "data.global_batch_size=4", "trainer.log_every=3", "trainer.val_every=0",
        "trainer.sample_tokens=0", "trainer.progress_bar=false"]


def test_eval_every_logs_the_suite_and_equals_scoring_the_checkpoint(tmp_path):
    run(FAST + ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2", "trainer.loggers=[csv,tensorboard]",
                "eval=cluewsc", f"eval.data_dir={DATA}"], tmp_path)
    with open(tmp_path / "metrics" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/cluewsc/accuracy")]
    assert [int(r["step"]) for r in rows] == [2, 4]  # logged at those steps though log_every is 3

    from internlm.components.eval.runner import load_suite, predict, score
    from internlm.inference.scoring import for_internlm
    from internlm.runtime.saved_run import load

    (dataset,) = load_suite(compose_suite("cluewsc"))
    for row in rows:  # independent: the saved weights of that step, scored afterwards, request by request
        model, tokenizer = load(str(tmp_path / "checkpoints" / f"step-{int(row['step']):08d}"), "cpu")
        lm = for_internlm("after", model, tokenizer)
        lm.share_prefixes = False
        assert float(row["eval/cluewsc/accuracy"]) == pytest.approx(score(dataset, predict(dataset, lm))["accuracy"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("eval/cluewsc/accuracy")] == [2, 4]


def test_eval_every_without_a_suite_or_with_a_missing_folder_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="no evaluation suite is chosen"):
        run(FAST + ["trainer.max_steps=2", "trainer.eval_every=1", "trainer.loggers=[]"], tmp_path / "a")
    with pytest.raises(ConfigError, match="data folder not found"):
        run(FAST + ["trainer.max_steps=2", "trainer.eval_every=1", "trainer.loggers=[]", "eval=cluewsc",
                    f"eval.data_dir={tmp_path / 'nowhere'}"], tmp_path / "b")
    assert not list((tmp_path / "b").rglob("step-*"))  # no step ran
