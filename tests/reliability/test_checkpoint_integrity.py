"""Checkpoints that cannot lie: damage is named, resume falls back to the newest good checkpoint
(and then equals the uninterrupted run), a failed write leaves the previous one intact, a run
folder has one owner, and nothing in a checkpoint is executed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from internlm.api import run
from internlm.errors import ConfigError
from internlm.runtime import checkpoint
from internlm.runtime.checkpoint import RunFolderLock, complete_checkpoints


def _steps(overrides: list[str]) -> list[str]:
    return overrides + ["trainer.max_steps=4", "data.micro_batch_size=2", "trainer.checkpoint_every=2"]


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _a_shard(ckpt):
    return sorted((ckpt / "state").glob("*.distcp"))[0]


def test_a_corrupt_shard_is_named_set_aside_and_resume_equals_the_uninterrupted_run(tmp_path, fast_overrides, caplog):
    overrides = _steps(fast_overrides)
    straight = run(overrides, tmp_path)["losses"]
    newest = complete_checkpoints(tmp_path)[-1]
    shard = _a_shard(newest)
    _flip_a_byte(shard)
    damaged_bytes = shard.read_bytes()
    assert "corrupt" in checkpoint.damage(newest) and str(shard) in checkpoint.damage(newest)

    resumed = run(overrides + ["trainer.resume=auto"], tmp_path)["losses"]
    assert resumed == straight[2:]  # fell back to step 2, replayed 3-4 exactly
    assert str(shard) in caplog.text and "falling back" in caplog.text
    aside = tmp_path / "checkpoints" / f"corrupt-{newest.name}"
    assert (aside / "state" / shard.name).read_bytes() == damaged_bytes  # kept as it was, not overwritten
    assert checkpoint.damage(complete_checkpoints(tmp_path)[-1]) is None


def test_an_explicit_damaged_checkpoint_or_a_truncated_file_is_refused_by_path(tmp_path, fast_overrides):
    run(_steps(fast_overrides), tmp_path)
    first, newest = complete_checkpoints(tmp_path)
    extras = newest / checkpoint.EXTRAS
    extras.write_bytes(extras.read_bytes()[:-10])
    with pytest.raises(ConfigError) as info:
        checkpoint.find_checkpoint(str(newest), newest)
    assert str(extras) in info.value.render() and "truncated" in info.value.render()
    _flip_a_byte(_a_shard(first))
    with pytest.raises(ConfigError) as info:  # every checkpoint damaged: never a silent start from 0
        run(_steps(fast_overrides) + ["trainer.resume=auto"], tmp_path)
    assert "every checkpoint" in info.value.render()


def test_a_failed_write_leaves_the_previous_checkpoint_intact_and_stops_with_one_message(tmp_path, fast_overrides):
    with pytest.raises(ConfigError) as info:
        run(_steps(fast_overrides) + ["debug.fail_checkpoint_at_step=4"], tmp_path)
    message = info.value.render()
    assert "writing checkpoint 4 failed" in message and "step-00000002, is intact" in message
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002"]
    assert checkpoint.damage(complete_checkpoints(tmp_path)[0]) is None
    assert not list((tmp_path / "checkpoints").glob(".*partial"))


def test_keep_checkpoints_never_prunes_the_good_one_for_a_damaged_newer_one(tmp_path, fast_overrides):
    overrides = _steps(fast_overrides) + ["trainer.checkpoint_every=1"]
    run(overrides + ["trainer.max_steps=3", "trainer.keep_checkpoints=2"], tmp_path)
    good, damaged = complete_checkpoints(tmp_path)
    _flip_a_byte(_a_shard(damaged))
    run(overrides + ["trainer.max_steps=4", "trainer.keep_checkpoints=1", "trainer.resume=auto"], tmp_path)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000004"]
    assert checkpoint.damage(complete_checkpoints(tmp_path)[0]) is None
    assert (tmp_path / "checkpoints" / f"corrupt-{damaged.name}").is_dir()


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from internlm.runtime.checkpoint import RunFolderLock
RunFolderLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_process_on_the_run_folder_is_refused_with_the_holders_pid_and_touches_nothing(tmp_path, fast_overrides):
    (tmp_path / "plan.yaml").write_text("the running run's plan\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as info:  # the program's own path (internlm.api.run)
            run(_steps(fast_overrides), tmp_path)
        assert f"pid {holder.pid}" in info.value.render()
        cli = subprocess.run(  # the command line: refused before Hydra writes its .hydra/ too
            [sys.executable, "-m", "internlm", *_steps(fast_overrides), f"hydra.run.dir={tmp_path}"],
            capture_output=True, text=True,
        )
        assert cli.returncode == 2 and f"pid {holder.pid}" in cli.stderr and "Traceback" not in cli.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "plan.yaml"]
        assert (tmp_path / "plan.yaml").read_text() == "the running run's plan\n"
    finally:
        holder.kill()
        holder.wait()
    run(_steps(fast_overrides), tmp_path)  # the holder is gone (killed: the kernel dropped its lock)


def test_the_lock_is_reentrant_within_its_process(tmp_path):
    outer = RunFolderLock(tmp_path).acquire()
    inner = RunFolderLock(tmp_path).acquire()  # the program inside the CLI, the training loop inside the program
    inner.release()
    assert RunFolderLock._held  # still held by the outer one
    outer.release()
    assert not RunFolderLock._held


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_with_a_payload_in_a_checkpoint_is_never_executed(tmp_path, fast_overrides, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(_steps(fast_overrides), tmp_path)
    newest = complete_checkpoints(tmp_path)[-1]
    extras = newest / checkpoint.EXTRAS
    extras.write_bytes(pickle.dumps({"step": _Payload()}))
    meta = json.loads((newest / "meta.json").read_text())  # an attacker fixes the checksum too
    meta["files"][checkpoint.EXTRAS] = {"bytes": extras.stat().st_size, "sha256": checkpoint.file_digest(extras)}
    (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as info:
        run(_steps(fast_overrides) + ["trainer.resume=auto"], tmp_path)
    assert "not plain data" in info.value.render() and str(extras) in info.value.render()
    assert not (tmp_path / "PWNED").exists()


def test_a_target_outside_the_allowlist_is_refused(tmp_path, fast_overrides):
    with pytest.raises(ConfigError) as info:
        run(fast_overrides + ["optimizer=torch", "optimizer.target=os.system"], tmp_path)
    assert "os.system" in info.value.render() and "allowed" in info.value.render()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short run whose checkpoints the tampering tests copy (training once, not per case)."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    run(_steps(["data.seq_len=32", "data.global_batch_size=4", "trainer.val_every=0", "trainer.loggers=[]",
                "trainer.sample_tokens=0", "trainer.progress_bar=false"]), folder)
    return folder


@pytest.mark.parametrize("tamper", ["target_in_section", "component_name"])
def test_a_checkpoint_config_naming_code_outside_the_allowlist_is_refused_and_never_imported(tmp_path, trained_run, monkeypatch, tamper):
    import yaml

    import internlm

    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_run, tmp_path / "run")
    newest = complete_checkpoints(tmp_path / "run")[-1]
    if tamper == "target_in_section":  # Hydra's instantiate would call this; our readers must not
        saved = yaml.safe_load((newest / "config.yaml").read_text())
        saved["model"]["_target_"] = "os.system"
        saved["model"]["_args_"] = ["touch PWNED"]
        (newest / "config.yaml").write_text(yaml.safe_dump(saved))
        meta = json.loads((newest / "meta.json").read_text())  # an attacker fixes the checksum too
        config = newest / "config.yaml"
        meta["files"]["config.yaml"] = {"bytes": config.stat().st_size, "sha256": checkpoint.file_digest(config)}
        (newest / "meta.json").write_text(json.dumps(meta))
    else:
        meta = json.loads((newest / "meta.json").read_text())
        meta["components"]["model"] = "os.system"
        (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as info:
        internlm.load(newest)
    message = info.value.render()
    assert ("not in 'TransformerConfig'" in message) if tamper == "target_in_section" else ("os.system" in message)
    assert not (tmp_path / "PWNED").exists()


TWO_RANKS = ["data.seq_len=32", "data.global_batch_size=8", "trainer.max_steps=4", "trainer.checkpoint_every=2",
             "trainer.log_every=1", "trainer.val_every=0", "trainer.loggers=[csv]", "trainer.sample_tokens=0",
             "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=2", "strategy=ddp"]


@pytest.mark.parametrize("writer", ["sync", "async"])
def test_a_failed_write_on_one_rank_of_two_stops_every_rank_and_keeps_the_previous_checkpoint(tmp_path, writer):
    """Rank 1 alone hits an I/O error writing checkpoint 4: both ranks agree (before the collective
    write; for a background write, before its commit), neither waits for the other, step 2 stays
    whole and nothing of step 4 is committed."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "internlm", *TWO_RANKS, f"trainer.async_checkpoint={writer == 'async'}",
               "debug.fail_checkpoint_at_step=4", "debug.fail_checkpoint_rank=1", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # a background write's failure is found where its result is collected, before its commit
    expected = f"writing checkpoint 4 failed{' in the background' if writer == 'async' else ''} ("
    for attempt in (1, 2):  # a gloo launch rarely aborts while connecting: retried once
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if expected in result.stderr:
            break
        shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr, result.stderr[-3000:]
    assert "rank 1" in result.stderr and "step-00000002, is intact" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-00000002"]
    assert checkpoint.damage(complete_checkpoints(run_dir)[0]) is None
    assert not list((run_dir / "checkpoints").glob(".*partial"))
