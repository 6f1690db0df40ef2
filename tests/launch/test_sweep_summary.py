"""The sweep summary callback with Hydra's own JobReturn: a task that raised is FAILED in the table
even though its Slurm job exits 0 (Hydra catches the exception: hydra #1928)."""

from __future__ import annotations

import json

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from internlm.launch.sweep_summary import SweepSummary, write_summary


def job_config(sweep_dir, num: int, point: str):
    return OmegaConf.create({"hydra": {
        "sweep": {"dir": str(sweep_dir)}, "runtime": {"output_dir": str(sweep_dir / str(num))},
        "job": {"num": num}, "overrides": {"task": [point, "trainer.max_steps=2"]},
    }})


def finished(status: JobStatus, value) -> JobReturn:
    ret = JobReturn()
    ret.status, ret._return_value = status, value
    return ret


def test_failed_and_completed_points(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    callback = SweepSummary(configure_submitit=False)
    ok, bad = job_config(tmp_path, 0, "optimizer.lr=0.001"), job_config(tmp_path, 1, "optimizer.lr=0.003")
    metrics = tmp_path / "0" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "metrics.csv").write_text(
        "perf/tokens_per_s,step,train/loss,val/loss\n100.0,1,8.0,\n300.0,2,7.5,7.25\n"
    )
    for config in (ok, bad):
        callback.on_job_start(config)
    callback.on_job_end(ok, finished(JobStatus.COMPLETED, {"losses": [8.0, 7.5]}))
    callback.on_job_end(bad, finished(JobStatus.FAILED, ValueError("Invalid learning rate: -1.0")))

    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["state"] for r in rows] == ["COMPLETED", "FAILED"]
    assert rows[0]["train/loss"] == 7.5 and rows[0]["val/loss"] == 7.25
    assert rows[0]["tokens/s"] == pytest.approx(200.0)  # the mean of the logged steps
    assert rows[1]["error"] == "ValueError: Invalid learning rate: -1.0"
    table = (tmp_path / "summary.md").read_text()
    assert "common overrides: trainer.max_steps=2" in table
    assert "| optimizer.lr=0.001 | COMPLETED | 7.5000 | 7.2500 | 200 |" in table
    assert "| optimizer.lr=0.003 | FAILED | - | - | - |" in table


def test_a_point_that_never_recorded_its_end_is_not_a_success(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "999999")  # a job Slurm does not know (any more)
    SweepSummary(configure_submitit=False).on_job_start(job_config(tmp_path, 0, "optimizer.lr=0.001"))
    (row,) = json.loads(write_summary(tmp_path, ask_slurm=True).with_suffix(".json").read_text())
    assert row["state"] == "FAILED"
