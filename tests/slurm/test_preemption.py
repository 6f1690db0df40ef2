"""Preemption and stop requests: save at a step boundary, continue with trainer.resume=auto, and end
with exactly the losses of a run that was never interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiprocess.launch import COMMON, assert_same_run, launch, read_metrics
from tests.slurm.conftest import REPO, TEST_JOB_NAME, scontrol, venv_env, wait_for, wait_for_job

STEPS = 40
LONG = [*COMMON, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=0"]  # only the stop (and the end) save


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("reference") / "run", *LONG)


def logged_steps(run_dir: Path) -> int:
    try:
        return max(read_metrics(run_dir), default=0)
    except (OSError, KeyError, ValueError):
        return 0


def checkpoints(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.glob("step-*")) if folder.is_dir() else []


def test_slurm_signal_checkpoints_requeues_and_resumes_exactly(slurm, tmp_path, uninterrupted):
    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "internlm", "-m", "hydra/launcher=slurm_cpu_test", f"hydra.launcher.name={TEST_JOB_NAME}",
         *LONG, "trainer.resume=auto", f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        run_dir = sweep_dir / "0"
        record = sweep_dir / ".points" / "0.json"
        wait_for(lambda: record.is_file() and logged_steps(run_dir) >= 2, 120, "the job's first steps")
        job = json.loads(record.read_text())["job"]
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        # The job saves after its current step and requeues itself; Slurm holds a requeued job
        # for two minutes (BeginTime): release it now.
        wait_for(
            lambda: (i := scontrol(job)).get("Restarts") == "1" and i.get("JobState") == "PENDING" and i, 60, "the requeue"
        )
        stopped_at = checkpoints(run_dir)
        assert len(stopped_at) == 1 and stopped_at[0] != f"step-{STEPS:08d}", stopped_at
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        output, _ = sweep.communicate(timeout=150)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output[-3000:]
    assert wait_for_job(job, timeout=60)["JobState"] == "COMPLETED"
    log = (run_dir / "__main__.log").read_text()
    assert "requeuing Slurm job" in log and f"resumed from {run_dir}/checkpoints/{stopped_at[0]}" in log
    ours = read_metrics(run_dir)
    assert sorted(ours) == list(range(1, STEPS + 1))
    assert_same_run(ours, uninterrupted, range(1, STEPS + 1))
    (row,) = json.loads((sweep_dir / "summary.json").read_text())
    assert row["state"] == "COMPLETED"


def test_stop_file_then_sigterm_save_and_resume_exactly(tmp_path, uninterrupted):
    """Without Slurm: a stop file stops the first run, SIGTERM the resumed one; each saves after its
    current step, and the third run ends with the uninterrupted run's losses. (One chain of three
    runs instead of two chains of two: a process start is most of a tiny run's cost.)"""
    run_dir, stop_file = tmp_path / "run", tmp_path / "STOP"
    env = {k: v for k, v in venv_env().items() if not k.startswith("SLURM_")}
    command = [sys.executable, "-m", "internlm", *LONG, f"trainer.stop_file={stop_file}", f"hydra.run.dir={run_dir}",
               "trainer.resume=auto"]
    stopped_at: list[str] = []
    for how in ("stop_file", "sigterm"):
        run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            start = logged_steps(run_dir)
            wait_for(lambda: logged_steps(run_dir) >= start + 2, 120, f"two steps before the {how} stop")
            if how == "stop_file":
                stop_file.touch()
            else:
                run.terminate()
            output, _ = run.communicate(timeout=120)
        finally:
            run.kill()
        assert run.returncode == 0, output[-3000:]
        saved = checkpoints(run_dir)
        assert len(saved) == len(stopped_at) + 1 and saved[-1] != f"step-{STEPS:08d}", (how, saved)
        stopped_at = saved
        assert not stop_file.exists()  # consumed, so the resumed run goes on
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    ours = read_metrics(run_dir)
    assert sorted(ours) == list(range(1, STEPS + 1))
    assert_same_run(ours, uninterrupted, range(1, STEPS + 1))
