"""A multirun sweep through hydra-submitit-launcher on a real Slurm: one job per point, a run folder
each, and a summary table in the sweep folder that tells a failed point from a finished one."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.multiprocess.launch import read_metrics
from tests.slurm.conftest import TEST_JOB_NAME, run_sweep

TINY = [
    "data.seq_len=64",
    "data.global_batch_size=4",
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.val_every=2",
    "trainer.val_batches=1",
    "trainer.loggers=[csv]",
    "trainer.sample_tokens=0",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.checkpoint_every=0",
    f"hydra.launcher.name={TEST_JOB_NAME}",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, slurm_cluster):
    """Three points: two learning rates that train, and a negative one that is refused."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_sweep(["hydra/launcher=slurm_cpu_test", "optimizer.lr=1e-3,3e-3,-1", *TINY, f"hydra.sweep.dir={sweep_dir}"])
    subprocess.run(["scancel", f"--name={TEST_JOB_NAME}"], timeout=30)
    return sweep_dir, result


def summary(sweep_dir: Path) -> dict[str, dict]:
    return {r["point"].split()[0]: r for r in json.loads((sweep_dir / "summary.json").read_text())}


def test_each_point_is_a_slurm_job_with_a_complete_run_folder(sweep):
    sweep_dir, _ = sweep
    for num, lr in ((0, "0.001"), (1, "0.003")):
        run_dir = sweep_dir / str(num)
        assert (run_dir / "plan.yaml").is_file()
        assert f"lr: {lr}" in (run_dir / "plan.yaml").read_text() or f"lr: {float(lr)}" in (run_dir / "plan.yaml").read_text()
        assert (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*4"))
        assert sorted(read_metrics(run_dir)) == [1, 2, 3, 4]
        # The job's own log says which Slurm job ran it.
        log = (run_dir / "__main__.log").read_text()
        job = re.search(r"Slurm job (\d+_\d+) on ", log)
        assert job, log[-2000:]
        assert list(sweep_dir.glob(f".submitit/{job.group(1)}/*_log.out"))


def test_summary_lists_both_points_with_their_losses(sweep):
    sweep_dir, _ = sweep
    rows = summary(sweep_dir)
    for num, lr in ((0, "optimizer.lr=0.001"), (1, "optimizer.lr=0.003")):
        row = rows[lr]
        metrics = read_metrics(sweep_dir / str(num))
        assert row["state"] == "COMPLETED"
        assert row["train/loss"] == pytest.approx(metrics[4]["loss"])  # the last step's loss
        assert 0 < row["val/loss"] < 20 and row["tokens/s"] > 0
    table = (sweep_dir / "summary.md").read_text()
    assert "| optimizer.lr=0.001 | COMPLETED |" in table and "| optimizer.lr=0.003 | COMPLETED |" in table


def test_a_failed_point_shows_as_failed(sweep):
    sweep_dir, result = sweep
    assert result.returncode != 0
    row = summary(sweep_dir)["optimizer.lr=-1"]
    assert row["state"] == "FAILED"
    assert "lr" in row["error"], row
    assert "| optimizer.lr=-1 | FAILED |" in (sweep_dir / "summary.md").read_text()


def test_launcher_presets_compose_on_hydra_13():
    """The presets reach hydra-submitit-launcher's schema only through its defaults entry, so hydra
    1.3 composes them (a structured config naming SlurmQueueConf fails: hydra #2697). Composed in
    this process (the sweep above runs the CLI path): three subprocesses cost ~30 s of suite time."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from internlm.paths import conf_dir
    from internlm.preflight import compose as compose_job

    compose_job([])  # registers the root and component schemas, as the CLI does
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for preset, expected in (("slurm_cpu_test", "cpus_per_task: 1"), ("slurm_8gpu_node", "tasks_per_node: 8"),
                                 ("slurm_1gpu", "gpus_per_node: 1")):
            launcher = compose("config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True).hydra.launcher
            assert expected in OmegaConf.to_yaml(launcher), preset
            assert launcher._target_.endswith("submitit_launcher.SlurmLauncher"), preset
