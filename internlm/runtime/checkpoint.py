"""Checkpoints in the run folder: written atomically, found again by `trainer.resume=auto`.

Layout: ``<run>/checkpoints/step-00000100/`` holding ``state`` (Fabric's format for the strategy:
one file on a single device, a torch.distributed.checkpoint folder when sharded), ``config.yaml``
(the resolved config, so a checkpoint is self-describing) and ``meta.json``. A checkpoint is written
under a temporary name and renamed when complete: a crash mid-save leaves the previous one intact
and never a folder that looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from internlm.errors import ConfigError

PREFIX = "step-"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(spec: str, run_dir: Path) -> Path | None:
    """`auto` -> newest complete checkpoint of this run (None if there is none yet);
    a path -> that checkpoint, or the newest one of that run folder."""
    if spec == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(spec)
    if (path / "meta.json").is_file():
        return path
    found = complete_checkpoints(path)
    if found:
        return found[-1]
    raise ConfigError(
        f"no complete checkpoint at '{spec}'",
        where="trainer.resume / checkpoint",
        fix="pass a checkpoint folder (…/checkpoints/step-N) or a run folder that has one",
    )


def save(
    fabric, run_dir: Path, step: int, state: dict[str, Any], config: DictConfig, components: dict[str, str], keep: int
) -> Path:
    """`components` maps each group to its registered name, so a reader can rebuild typed configs."""
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.partial"
    if fabric.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    fabric.barrier()
    fabric.save(tmp / "state", state)
    if fabric.is_global_zero:
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
        (tmp / "meta.json").write_text(json.dumps({"step": step, "components": components}, indent=1))
        if final.exists():  # a rerun of the same step: replace it only now that the new one is whole
            shutil.rmtree(final)
        tmp.rename(final)
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    fabric.barrier()
    return final


def read_config(checkpoint: Path) -> dict:
    return yaml.safe_load((checkpoint / "config.yaml").read_text())


def read_meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "meta.json").read_text())


def check_same_model(checkpoint: Path, model_config: dict) -> None:
    """Refuse, before loading, a checkpoint of another model shape."""
    saved = read_config(checkpoint).get("model", {})
    shape_keys = ("vocab_size", "hidden_size", "num_layers", "tie_embeddings")
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {model_config.get(k)!r}" for k in shape_keys if saved.get(k) != model_config.get(k)]
    for k in ("num_heads", "num_kv_heads", "qkv_bias", "out_bias"):
        a, b = saved.get("attention", {}).get(k), model_config.get("attention", {}).get(k)
        if a != b:
            diffs.append(f"attention.{k}: checkpoint {a!r} vs config {b!r}")
    a, b = saved.get("mlp", {}).get("intermediate_size"), model_config.get("mlp", {}).get("intermediate_size")
    if a != b:
        diffs.append(f"mlp.intermediate_size: checkpoint {a!r} vs config {b!r}")
    if diffs:
        raise ConfigError(
            f"checkpoint {checkpoint} holds a model of another shape: " + "; ".join(diffs),
            where="trainer.resume",
            fix="resume with the model config the checkpoint was trained with, or start a new run folder",
        )


def load(fabric, checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Restore `state` in place; returns what Fabric could not restore in place (plain values)."""
    return fabric.load(checkpoint / "state", state)
