"""Per-step training metrics: throughput, MFU and peak memory."""

from __future__ import annotations

import csv
import resource
import time
import warnings
from pathlib import Path

import torch

from internlm.planning.flops import peak_flops


class StepTimer:
    """Wall time of each optimizer step. No device sync: every step already waits for its own
    loss (train_step reads it after the backward), so the time between laps is the step period;
    a sync here would also wait for the update and leave the GPU idle while the host prepares
    the next step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def throughput(tokens_per_step: int, seconds: float, world_size: int, flops_per_token: float, device, override_tflops):
    tokens_per_s = tokens_per_step / seconds
    per_device = tokens_per_s / world_size
    out = {"tokens_per_s": tokens_per_s, "tokens_per_device_per_s": per_device}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, override_tflops)
    if peak:
        out["mfu"] = per_device * flops_per_token / peak
    return out


def keep_csv_history(loggers, step: int) -> None:
    """On resume: keep the metrics the earlier run logged up to `step`. Lightning's CSV logger
    deletes an existing metrics.csv when it starts; hand it the old rows to write again, and drop
    the rows a crashed run logged past its last checkpoint (the resumed run logs them anew)."""
    from lightning.fabric.loggers import CSVLogger

    for logger in loggers:
        if isinstance(logger, CSVLogger):
            _keep_rows(logger, step)


def _keep_rows(logger, step: int) -> None:
    path = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if path.is_file():
        with path.open(newline="") as handle:
            rows = [
                {k: v for k, v in row.items() if v != ""}
                for row in csv.DictReader(handle)
                if int(float(row["step"])) <= step
            ]
    with warnings.catch_warnings():  # its "previous log files will be deleted": not so, see above
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # created now: this is when the old file is removed
    writer.metrics = rows + writer.metrics
