"""Run `python -m internlm` as a user does (Fabric launches the processes) and read what it logged."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

# The tiny model on short rows: a few optimizer steps of a real run, in seconds per process.
COMMON = [
    "data.seq_len=32",
    "data.global_batch_size=8",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=3",
    "trainer.keep_checkpoints=2",
    "trainer.log_every=1",
    "trainer.val_every=0",
    "trainer.loggers=[csv]",
    "trainer.sample_tokens=0",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
]


def launch(run_dir: Path | None, *overrides: str, devices: int = 1, cwd: Path | None = None) -> dict[int, dict[str, float]]:
    """Train on `devices` CPU processes in `run_dir` (None: Hydra's own run folder under `cwd`);
    returns {step: {"loss", "grad_norm"}} from the run's metrics.csv.

    A multi-process gloo run rarely aborts while connecting: a failed launch is retried once."""
    command = [sys.executable, "-m", "internlm", *COMMON, f"trainer.devices={devices}", *overrides]
    if run_dir is not None:
        command.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for attempt in (1, 2):
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            break
        shutil.rmtree(run_dir if run_dir is not None else Path(cwd) / "outputs", ignore_errors=True)
    else:
        raise RuntimeError(f"{' '.join(command)} failed twice:\n{result.stderr[-4000:]}")
    return read_metrics(run_dir if run_dir is not None else find_run_dir(Path(cwd)))


def find_run_dir(cwd: Path) -> Path:
    """The one run folder Hydra made under `cwd` (all ranks must have agreed on it)."""
    found = [p for p in (cwd / "outputs").rglob("plan.yaml")]
    assert len(found) == 1, f"the ranks wrote {len(found)} run folders: {found}"
    return found[0].parent


def read_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    with open(run_dir / "metrics" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): {"loss": float(r["train/loss"]), "grad_norm": float(r["train/grad_norm"])} for r in rows}


def checkpoint_state(checkpoint: Path) -> dict:
    """A checkpoint's model and optimizer tensors, unsharded, on this CPU process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint.parent / f".{checkpoint.name}.full.pt"
    if not target.exists():
        dcp_to_torch_save(checkpoint / "state", target)
    return torch.load(target, weights_only=True)


# fp32 rounding: sharded reductions (and tensor-parallel matmuls) sum in another order than one
# process does; the gradient norm, a sum of squares of small numbers, differs more than the loss.
RTOL = {"loss": 2e-5, "grad_norm": 5e-4}


def assert_same_run(ours: dict, reference: dict, steps, key: str = "loss") -> None:
    """Equal up to fp32 rounding at every step in `steps`."""
    rtol = RTOL[key]
    for step in steps:
        a, b = ours[step][key], reference[step][key]
        assert abs(a - b) <= rtol * abs(b), f"step {step}: {key} {a} vs {b} (all: {ours} vs {reference})"


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def assert_same_state(a: dict, b: dict, rtol: float = 1e-3) -> None:
    """Model weights and AdamW moments equal (as `checkpoint_state` returns them), tensor by tensor,
    in relative norm. After a few steps in another reduction order they differ by ~1e-5 (Adam turns
    rounding-level differences of near-zero gradients into visible ones); three steps of training
    move the weights by ~0.2, and a run that lost its optimizer state differs by far more."""
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert relative_difference(tensor, b["model"][name]) <= rtol, f"model {name}"
    states_a, states_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert states_a.keys() == states_b.keys() and len(states_a) == len(a["model"])
    for name, moments in states_a.items():
        assert moments.keys() == states_b[name].keys()
        for moment, tensor in moments.items():
            assert relative_difference(tensor, states_b[name][moment]) <= rtol, f"optimizer {name}.{moment}"
