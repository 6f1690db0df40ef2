"""The training program end to end on CPU: loss falls, checkpoints resume exactly, bad input is refused."""

from __future__ import annotations

import shutil

import pytest
import torch

import internlm
import internlm.paths
from internlm.api import run
from internlm.errors import ConfigError
from internlm.runtime.checkpoint import complete_checkpoints


def test_loss_falls_on_the_bundled_corpus(tmp_path, fast_overrides):
    result = run(fast_overrides + ["trainer.max_steps=40", "trainer.checkpoint_every=0"], tmp_path)
    losses = result["losses"]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 7.0  # about ln(4096) = 8.3 at random init
    assert last < first - 1.0


@pytest.mark.parametrize("precision", [
    [],
    # bf16 weights with fp32 master copies and moments in the optimizer: torch's load_state_dict
    # would cast those to bf16 on resume, and the resumed losses would part from the straight ones
    ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "optimizer.master_weights=true", "optimizer.lr=1e-3"],
], ids=["fp32", "bf16-master-weights"])
def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path, fast_overrides, precision):
    overrides = fast_overrides + ["trainer.max_steps=8", "data.micro_batch_size=2", "trainer.checkpoint_every=4", "trainer.loggers=[csv]", *precision]
    straight = run(overrides, tmp_path)["losses"]
    # A crash after step 4: only the step-4 checkpoint survives.
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000008")
    resumed = run(overrides + ["trainer.resume=auto"], tmp_path)["losses"]
    assert resumed == straight[4:]  # exact float equality: same data, same state, same arithmetic
    import csv

    steps = [int(r["step"]) for r in csv.DictReader((tmp_path / "metrics" / "metrics.csv").open())]
    assert steps == list(range(1, 9))  # each step logged once, though steps 5-8 ran twice


def test_checkpoints_are_complete_or_invisible(tmp_path, fast_overrides):
    run(fast_overrides + ["trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=1"], tmp_path)
    found = complete_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-00000004"]  # older ones pruned
    partial = tmp_path / "checkpoints" / ".step-00000006.partial"
    shutil.copytree(found[0], partial)  # what a crash mid-save leaves behind
    (partial / "meta.json").unlink()
    assert complete_checkpoints(tmp_path) == found


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path, fast_overrides):
    run(fast_overrides + ["trainer.max_steps=2"], tmp_path)
    with pytest.raises(ConfigError) as info:
        run(fast_overrides + ["trainer.max_steps=4", "trainer.resume=auto", "model.num_layers=2"], tmp_path)
    assert "num_layers" in info.value.render()


def test_load_returns_the_trained_model_and_its_tokenizer(tmp_path, fast_overrides):
    run(fast_overrides + ["trainer.max_steps=2"], tmp_path)
    model, tokenizer = internlm.load(tmp_path)
    ids = tokenizer.encode("To be, or not to be", bos=True)
    logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), 4096)
    assert torch.isfinite(logits).all()


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(tmp_path, fast_overrides):
    run(fast_overrides + ["trainer.max_steps=2"], tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as info:
        run(fast_overrides + ["trainer.max_steps=7"], tmp_path)  # forgot trainer.resume=auto
    assert "resume" in info.value.render()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # plan.yaml, metrics and checkpoints untouched


def test_validation_from_files_and_from_a_fraction_at_once_is_refused(tmp_path, fast_overrides):
    corpus = str(internlm.paths.CORPUS_DIR / "tang_song.jsonl")
    with pytest.raises(ConfigError) as info:
        run(fast_overrides + ["data=text", f"data.paths=[{corpus}]", f"data.val_paths=[{corpus}]", "data.val_fraction=0.1"], tmp_path)
    assert "val_fraction" in info.value.render() and "val_paths" in info.value.render()
