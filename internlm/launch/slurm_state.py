"""What Slurm says about a job, with or without an accounting database.

`sacct` needs slurmdbd; small clusters (and launchers/slurm/local_cluster.sh) have none, but
`scontrol show job` knows every job until MinJobAge after it ends. Both answer here in sacct's
shape: {"<job>" or "<array job>_<task>": {"State": ..., "NodeList": ..., "ExitCode": ...}}.
"""

from __future__ import annotations

import shutil
import subprocess

# States after which a job will not run again (REQUEUED and PREEMPTED jobs come back).
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
}


def parse_scontrol(text: str) -> dict[str, dict[str, str]]:
    """`scontrol show job -o` lines (one job each, `Key=Value` words) in sacct's shape."""
    info: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if "JobId" not in fields:
            continue
        key = fields["JobId"]
        if fields.get("ArrayTaskId") not in (None, "N/A") and "ArrayJobId" in fields:
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        info[key] = {
            "State": fields.get("JobState", "UNKNOWN"),
            "NodeList": fields.get("NodeList", ""),
            "ExitCode": fields.get("ExitCode", ""),
            "Restarts": fields.get("Restarts", "0"),
        }
    return info


def scontrol_jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Every listed job (array jobs with all their tasks) that scontrol still knows."""
    info: dict[str, dict[str, str]] = {}
    if shutil.which("scontrol") is None:  # not a Slurm host: nothing is known
        return info
    for job in sorted({str(j).split("_")[0] for j in job_ids}):
        result = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            info.update(parse_scontrol(result.stdout))
    return info


def job_state(job_id: str) -> str:
    """'COMPLETED', 'FAILED', 'RUNNING', ... or 'UNKNOWN' when Slurm no longer knows the job."""
    return scontrol_jobs([job_id]).get(str(job_id), {}).get("State", "UNKNOWN")
