"""A real Slurm for these tests: the one of launchers/slurm/local_cluster.sh (CI brings it up).

The tests skip, saying why, only when no cluster answers and none can be started (not root, no
Slurm packages and no apt). Each job is bounded in time; a job left behind is cancelled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "launchers" / "slurm" / "local_cluster.sh"


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and any(s in result.stdout for s in ("idle", "mixed", "alloc"))


TEST_JOB_NAME = "internlm-test"  # every job these tests submit; cancelled after each test


@pytest.fixture
def slurm(slurm_cluster):
    yield
    subprocess.run(["scancel", f"--name={TEST_JOB_NAME}"], timeout=30)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    if cluster_answers():
        return
    if os.geteuid() != 0:
        pytest.skip("no Slurm cluster answers and starting one needs root: sudo bash launchers/slurm/local_cluster.sh up")
    result = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not cluster_answers():
        pytest.skip(f"slurmctld could not be started here: {(result.stderr or result.stdout)[-500:]}")


def venv_env() -> dict[str, str]:
    """This interpreter first on PATH: sbatch scripts call `python`, submitit calls sys.executable."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def scontrol(job: str) -> dict[str, str]:
    result = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    words = result.stdout.split()
    return dict(w.split("=", 1) for w in words if "=" in w)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def wait_for_job(job: str, timeout: float = 180) -> dict[str, str]:
    """Poll until the job ends; cancel it and fail when it runs past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = scontrol(job)
        if info.get("JobState") in FINAL:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"Slurm job {job} still {scontrol(job).get('JobState')} after {timeout} s")


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_sweep(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m internlm -m ...` as a user types it, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "internlm", "-m", *args], cwd=REPO, env=venv_env(), capture_output=True, text=True,
        timeout=timeout,
    )
