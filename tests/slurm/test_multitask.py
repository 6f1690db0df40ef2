"""Multi-process jobs: Slurm's tasks are the ranks (Fabric's SLURMEnvironment), and a layout that
does not match the strategy's world size stops before any process group starts."""

from __future__ import annotations

import json
import subprocess

from tests.multiprocess.launch import COMMON, assert_same_run, launch, read_metrics
from tests.slurm.conftest import REPO, TEST_JOB_NAME, run_sweep, venv_env, wait_for_job

SBATCH = REPO / "launchers" / "slurm" / "pretrain.sbatch"


def test_two_task_sbatch_job_trains_like_two_local_processes(slurm, tmp_path):
    run_dir = tmp_path / "slurm-run"
    submit = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={TEST_JOB_NAME}", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
         "--cpus-per-task=1", "--time=5", f"--output={tmp_path}/slurm-%j.log", str(SBATCH), *COMMON, "strategy=ddp"],
        cwd=REPO, env={**venv_env(), "RUN_DIR": str(run_dir)}, capture_output=True, text=True, timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip()
    info = wait_for_job(job, timeout=180)
    log = (tmp_path / f"slurm-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert f"job {job} (restart 0): 1 node(s) x 2 task(s)" in log
    assert "on 2 cpu device(s)" in log  # one world of two ranks, not two single-process runs

    reference = launch(tmp_path / "local-run", "strategy=ddp", devices=2)
    ours = read_metrics(run_dir)
    assert sorted(ours) == sorted(reference) == list(range(1, 7))
    assert_same_run(ours, reference, range(1, 7))


def test_three_tasks_for_a_world_of_two_fail_before_training(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep([
        "hydra/launcher=slurm_cpu_test", "hydra.launcher.tasks_per_node=3", f"hydra.launcher.name={TEST_JOB_NAME}",
        *COMMON, "trainer.devices=2", "strategy=hybrid_zero", f"hydra.sweep.dir={sweep_dir}",
    ], timeout=180)
    assert result.returncode != 0
    (row,) = json.loads((sweep_dir / "summary.json").read_text())
    assert row["state"] == "FAILED"
    message = row["error"]
    assert "Slurm started 3 task(s)" in message and "world size is 2" in message, message
    logs = list(sweep_dir.glob(".submitit/*/*_log.err"))
    text = "\n".join(p.read_text() for p in logs)
    assert text.count("world size is 2") == 3  # every task stopped at compile...
    assert "training" not in text and not (sweep_dir / "0" / "metrics").exists()  # ...before any step
