"""The sweep summary: one table in the sweep folder, a row per point, whatever became of it.

A Hydra callback (`hydra.callbacks.sweep_summary`, set by conf/hydra/launcher/slurm.yaml):

* `on_job_start` (in the job): writes `<sweep folder>/.points/<job num>.json` with state RUNNING,
  the point's overrides and the Slurm job id (beside, not inside, the run folder: a run refused
  at compile removes its folder).
* `on_job_end` (in the job): the state from Hydra's JobReturn (COMPLETED or FAILED: the task's
  exception, which Slurm never sees, since Hydra catches it and the job exits 0, hydra #1928),
  the final train/val loss and tokens/s from the run's metrics.csv; then rewrites the table.
* `on_multirun_start` / exit of the submitting process: applies the submitit settings
  (internlm.launch.submitit_setup) and writes the table once more when the sweep ends, also when
  Hydra stops at the first failed job (it raises before `on_multirun_end`).

A point still RUNNING in its file when the table is written takes Slurm's state (a job killed,
or one that exited before Hydra could record it, e.g. a config error: FAILED), with the first
`error:` line of its log.

Files: `<sweep folder>/summary.md` (the table) and `summary.json` (the same rows).
"""

from __future__ import annotations

import atexit
import csv
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from internlm.launch.slurm_state import FINAL_STATES, scontrol_jobs

log = logging.getLogger("internlm")
POINTS = ".points"  # one JSON file per point, in the sweep folder
COLUMNS = ("point", "state", "train/loss", "val/loss", "tokens/s", "job", "run folder")


class SweepSummary(Callback):
    def __init__(self, configure_submitit: bool = True):
        self.configure_submitit = configure_submitit
        self._sweep_dir: Path | None = None

    # -- submitting process --------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.configure_submitit:
            from internlm.launch.submitit_setup import configure_submitit

            configure_submitit()
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        atexit.register(self._final_table)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._final_table()

    def _final_table(self) -> None:
        if self._sweep_dir is not None and self._sweep_dir.is_dir():
            write_summary(self._sweep_dir, ask_slurm=True)

    # -- inside each job ----------------------------------------------------------------------
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_first_task():
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        num = int(config.hydra.job.num)
        record = {
            "num": num,
            "point": " ".join(config.hydra.overrides.task),
            "state": "RUNNING",
            "job": slurm_job_key(),
            "run_dir": str(run_dir),
            "log": submitit_log(),
        }
        write_json(point_file(config, num), record)
        if record["job"]:
            log.info("Slurm job %s on %s, restart %s", record["job"], socket.gethostname(), os.environ.get("SLURM_RESTART_COUNT", "0"))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not is_first_task():
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        num = int(config.hydra.job.num)
        record = read_json(point_file(config, num)) or {"num": num, "run_dir": str(run_dir)}
        record["state"] = job_return.status.name  # COMPLETED | FAILED, as Hydra saw the task end
        if record["state"] == "FAILED":
            record["error"] = f"{type(job_return._return_value).__name__}: {job_return._return_value}"[:300]
        record |= final_metrics(run_dir)
        write_json(point_file(config, num), record)
        write_summary(Path(str(config.hydra.sweep.dir)).absolute(), ask_slurm=False)


def point_file(config: DictConfig, num: int) -> Path:
    folder = Path(str(config.hydra.sweep.dir)).absolute() / POINTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{num}.json"


def is_first_task() -> bool:
    """Every task of a multi-task job runs the callbacks: rank 0 speaks for the job."""
    return int(os.environ.get("SLURM_PROCID", "0")) == 0


def slurm_job_key() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def submitit_log() -> str | None:
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # not a submitit job (a local multirun)
        return None


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The last train/loss and val/loss logged, and the mean tokens/s, from metrics/metrics.csv."""
    path = run_dir / "metrics" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out: dict[str, float] = {}
    for key in ("train/loss", "val/loss"):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            out[key] = values[-1]
    speeds = [float(r["perf/tokens_per_s"]) for r in rows if r.get("perf/tokens_per_s")]
    if speeds:
        out["tokens/s"] = sum(speeds) / len(speeds)
    return out


def collect(sweep_dir: Path, ask_slurm: bool) -> list[dict]:
    records = [read_json(p) for p in (sweep_dir / POINTS).glob("*.json")]
    records = sorted((r for r in records if r), key=lambda r: r.get("num", 0))
    unsettled = [r for r in records if r.get("state") == "RUNNING" and r.get("job")]
    if ask_slurm and unsettled:
        slurm = scontrol_jobs([r["job"] for r in unsettled])
        for record in unsettled:
            state = slurm.get(record["job"], {}).get("State", "UNKNOWN")
            if state in FINAL_STATES or state == "UNKNOWN":
                # It ended without Hydra recording an end: never a success.
                record["state"] = "FAILED" if state in ("COMPLETED", "UNKNOWN") else state
                record["error"] = first_error_line(record.get("log"))
                record |= final_metrics(Path(record["run_dir"]))
            else:
                record["state"] = state  # PENDING after a requeue, still RUNNING, ...
    return records


def first_error_line(log: str | None) -> str | None:
    if not log or not Path(log).is_file():
        return None
    for line in Path(log).read_text(errors="replace").splitlines():
        if line.startswith("error:") or "Error:" in line:
            return line.strip()[:300]
    return None


def write_summary(sweep_dir: Path, ask_slurm: bool) -> Path:
    """Rewrite summary.md and summary.json from every point's file (under a lock: jobs end together)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = collect(sweep_dir, ask_slurm)
        write_json(sweep_dir / "summary.json", records)
        atomic_write(sweep_dir / "summary.md", render(records))
    return sweep_dir / "summary.md"


def render(records: list[dict]) -> str:
    """A markdown table; the point column shows only the overrides that differ between points."""
    common = set.intersection(*(set((r.get("point") or "").split()) for r in records)) if len(records) > 1 else set()

    def cell(record: dict, column: str) -> str:
        point = " ".join(word for word in (record.get("point") or "").split() if word not in common)
        value = {"run folder": record.get("run_dir"), "point": point or "(defaults)"}.get(column, record.get(column))
        if isinstance(value, float):
            return f"{value:.4f}" if column != "tokens/s" else f"{value:,.0f}"
        return "-" if value in (None, "") else str(value).replace("|", "\\|")

    lines = [f"common overrides: {' '.join(sorted(common))}", ""] if common else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in records]
    errors = [f"- point {r.get('num')}: {r['error']}" for r in records if r.get("error")]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=1) + "\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
