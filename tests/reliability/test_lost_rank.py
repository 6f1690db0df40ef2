"""One rank of a two-process (gloo) run killed with -9 while the other lives: the survivor does not
wait for it; it stops with one message that says what happened and how to continue, the run
folder's newest complete checkpoint is intact, and a rerun with trainer.resume=auto continues
from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from internlm.runtime import checkpoint

RUN = ["data.seq_len=64", "data.micro_batch_size=2", "data.global_batch_size=8", "trainer.val_every=0",
       "trainer.loggers=[csv]", "trainer.sample_tokens=0", "trainer.progress_bar=false", "trainer.log_every=1",
       "trainer.checkpoint_every=10", "trainer.max_steps=400", "trainer.accelerator=cpu", "trainer.devices=2",
       "strategy=ddp"]
FIRST = "step-00000010"  # the checkpoint the kill follows; the next one (step 20) is ~10 steps away
HANG = 120  # seconds: the survivor measured ~1 s; gloo's own timeout would be 30 minutes


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = (run_dir.parent / f"{run_dir.name}-{time.monotonic_ns()}.log").open("w")
    # its own session: whatever happens, the test can take every rank down (Fabric starts rank 1 as a child)
    proc = subprocess.Popen([sys.executable, "-m", "internlm", *RUN, f"hydra.run.dir={run_dir}", *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.log = Path(log.name)
    return proc


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path) -> bool:
    while proc.poll() is None:
        if FIRST in [p.name for p in checkpoint.complete_checkpoints(run_dir)]:
            return True
        time.sleep(0.02)
    return False


def kill_rank_one(proc: subprocess.Popen) -> None:
    (rank_one,) = psutil.Process(proc.pid).children(recursive=True)  # rank 0 is the launching process
    os.kill(rank_one.pid, signal.SIGKILL)


def take_down(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_a_killed_rank_stops_the_survivor_with_one_message_and_the_run_resumes(tmp_path):
    for attempt in (1, 2):  # a gloo launch rarely aborts while connecting: retried once
        run_dir = tmp_path / f"run{attempt}"
        proc = start(run_dir)
        if wait_for_checkpoint(proc, run_dir):
            break
        take_down(proc)
    else:
        raise AssertionError(proc.log.read_text()[-3000:])
    kill_rank_one(proc)
    try:
        code = proc.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        take_down(proc)
        raise AssertionError(f"rank 0 still waits for the killed rank after {HANG} s")
    finally:
        take_down(proc)
    err = proc.log.read_text()
    assert code == 2, err[-3000:]  # one message, no traceback
    assert "Traceback" not in err, err[-3000:]
    assert "error: another process of this run stopped" in err and "rank 0 of 2 cannot go on" in err
    assert f"trainer.resume=auto: it continues from {run_dir / 'checkpoints' / FIRST}" in err

    complete = checkpoint.complete_checkpoints(run_dir)
    assert complete and all(checkpoint.damage(c) is None for c in complete)
    newest = complete[-1]

    # the same command, resumed: it goes on from the newest checkpoint, one step, then stops with a checkpoint
    stop = tmp_path / "stop"
    stop.touch()
    for attempt in (1, 2):
        rerun = start(run_dir, "trainer.resume=auto", f"trainer.stop_file={stop}")
        try:
            rerun.wait(timeout=300)
        finally:
            take_down(rerun)
        if rerun.returncode == 0:
            break
        stop.touch()
    resumed = rerun.log.read_text()
    assert rerun.returncode == 0, resumed[-3000:]
    step = int(newest.name.removeprefix("step-"))
    assert f"resumed from {newest} at step {step}" in resumed
    assert checkpoint.complete_checkpoints(run_dir)[-1].name == f"step-{step + 1:08d}"


FROZEN_TIMEOUT_S = 30  # above a rank's start-up on a 2-core machine: the group's rendezvous waits as long
SECOND = "step-00000020"


def wait_inside_second_write(proc: subprocess.Popen, run_dir: Path) -> bool:
    """Until rank 0 has written the second checkpoint's extras: both ranks are past the write's
    barrier and asleep in debug.slow_checkpoint_s; rank 0 then waits on the checkpoint's own gloo
    group (not the training group) for every rank's verdict."""
    extras = checkpoint.checkpoint_root(run_dir) / f".{SECOND}.partial" / checkpoint.EXTRAS
    while proc.poll() is None:
        if extras.exists():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("where", ["in a step", "in a checkpoint write"])
def test_a_frozen_rank_stops_the_survivor_after_the_collective_timeout(tmp_path, where):
    """SIGSTOP, not a kill: no connection closes, the survivor only sees silence. It waits
    trainer.collective_timeout_s (not torch's 30 minutes), then stops with the same one message:
    in a step (the training group) and inside a checkpoint write (the checkpoint's gloo group)."""
    extra = [f"trainer.collective_timeout_s={FROZEN_TIMEOUT_S}"]
    if where == "in a checkpoint write":
        extra.append("debug.slow_checkpoint_s=4")
    for attempt in (1, 2):  # a gloo launch rarely aborts while connecting: retried once
        run_dir = tmp_path / f"run{attempt}"
        proc = start(run_dir, *extra)
        if wait_for_checkpoint(proc, run_dir) and (where == "in a step" or wait_inside_second_write(proc, run_dir)):
            break
        take_down(proc)
    else:
        raise AssertionError(proc.log.read_text()[-3000:])
    (rank_one,) = psutil.Process(proc.pid).children(recursive=True)
    frozen_at = time.monotonic()
    os.kill(rank_one.pid, signal.SIGSTOP)
    try:
        code = proc.wait(timeout=FROZEN_TIMEOUT_S + HANG)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"rank 0 still waits for the frozen rank after {FROZEN_TIMEOUT_S + HANG} s")
    finally:
        take_down(proc)  # SIGKILL reaches a stopped process too
    waited = time.monotonic() - frozen_at
    err = proc.log.read_text()
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert "stopped answering" in err and "rank 0 of 2 cannot go on" in err, err[-3000:]
    assert "Timed out waiting" in err or "Application timeout" in err, err[-3000:]  # gloo's two words for it
    # gloo's clock starts when rank 0 enters the collective, which may be before the freeze: on a busy
    # 2-core machine rank 1 can lag a second or more behind. Any other way of stopping takes ~1 s.
    assert FROZEN_TIMEOUT_S - 5 <= waited, f"stopped after {waited:.0f} s: before the timeout, so not for it"
    complete = checkpoint.complete_checkpoints(run_dir)
    assert [c.name for c in complete] == [FIRST] and checkpoint.damage(complete[0]) is None
