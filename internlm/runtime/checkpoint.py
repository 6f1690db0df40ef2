"""Checkpoints in the run folder: sharded, reshardable, written atomically, found again by
`trainer.resume=auto`.

Layout of ``<run>/checkpoints/step-00000100/``:

* ``state/``: model and optimizer as a torch.distributed.checkpoint (DCP) folder. Every rank writes
  its own shards (FSDP2 / tensor-parallel DTensors), replicated tensors once; it loads back into any
  world size or mesh (DCP reads each rank's region from whatever chunks were written), and into a
  plain one-device model (the same code path runs without a process group).
* ``extras.pt``: everything else (scheduler, data loader position, step, RNG) written once, by
  rank 0: a loader's state is a position on the global sample stream, the same on every rank.
* ``config.yaml`` (the resolved config: a checkpoint is self-describing) and ``meta.json``.

A checkpoint is written under a temporary name and renamed when complete (``meta.json`` is the
last file written): a crash mid-save leaves the previous one intact and never a folder that looks
complete. With ``async_save`` the tensors are copied off the parameters at once and written in a
background thread; the rename happens when the write ends, at the next save or at
`wait_for_pending()`. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from internlm.errors import ConfigError

PREFIX = "step-"
STATE = "state"  # DCP folder: model and optimizer
EXTRAS = "extras.pt"  # the rest of the training state, written once
RNG_KEY = "_rng"


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it 'assumes a single process' on every one-device save and load: intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


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
    fabric,
    run_dir: Path,
    step: int,
    state: dict[str, Any],
    config: DictConfig,
    components: dict[str, str],
    keep: int,
    async_save: bool = False,
) -> Path:
    """Write `state` (a model, its optimizer, and stateful or plain extras) as checkpoint `step`.
    `components` maps each group to its registered name, so a reader can rebuild typed configs.
    Returns the checkpoint's final path (with `async_save`, complete only once committed)."""
    wait_for_pending()  # one save in flight at a time; the previous one is committed first
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.partial"
    if fabric.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    fabric.barrier()
    tensors, extras = split_state(state)
    if fabric.is_global_zero:
        torch.save(extras | {RNG_KEY: rng_state()}, tmp / EXTRAS)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
    commit = functools.partial(_commit, tmp, final, run_dir, step, components, keep) if fabric.is_global_zero else None
    import torch.distributed.checkpoint as dcp

    if async_save:
        future = dcp.async_save(tensors, checkpoint_id=tmp / STATE, process_group=_async_process_group(), no_dist=not _distributed())
        _PENDING.append(_PendingSave(future, commit))
        return final
    with _single_process_quiet():
        dcp.save(tensors, checkpoint_id=tmp / STATE, no_dist=not _distributed())  # returns once every rank's shards and the metadata are written
    if commit is not None:
        commit()
    fabric.barrier()
    return final


def _commit(tmp: Path, final: Path, run_dir: Path, step: int, components: dict[str, str], keep: int) -> None:
    """Rank 0, once every shard is on disk: mark complete, rename into place, prune old ones."""
    (tmp / "meta.json").write_text(json.dumps({"step": step, "components": components}, indent=1))
    if final.exists():  # a rerun of the same step: replace it only now that the new one is whole
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class _PendingSave:
    future: Any  # concurrent.futures.Future of DCP's background write
    commit: Callable[[], None] | None  # rank 0's rename, run when the write is done


_PENDING: list[_PendingSave] = []
_ASYNC_GROUP: list[Any] = []


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _async_process_group():
    """A separate gloo group for the background writer's collectives, so they never interleave
    with the training collectives of the main thread (created once, by every rank)."""
    import torch.distributed as dist

    if not _distributed():
        return None
    if not _ASYNC_GROUP:
        _ASYNC_GROUP.append(dist.new_group(backend="gloo"))
    return _ASYNC_GROUP[0]


def wait_for_pending() -> None:
    """Block until an asynchronous save has been written, then commit it. Call before exiting."""
    while _PENDING:
        pending = _PENDING.pop()
        pending.future.result()
        if pending.commit is not None:
            pending.commit()


def _unwrap(obj: Any) -> Any:
    """The module or optimizer under Fabric's wrappers (DCP works on the real objects)."""
    from lightning.fabric.wrappers import _FabricModule, _FabricOptimizer

    if isinstance(obj, _FabricModule):
        return obj.module
    if isinstance(obj, _FabricOptimizer):
        return obj.optimizer
    return obj


def _model_and_optimizers(state: dict[str, Any]) -> tuple[str, torch.nn.Module, dict[str, torch.optim.Optimizer]]:
    models = {k: _unwrap(v) for k, v in state.items() if isinstance(_unwrap(v), torch.nn.Module)}
    if len(models) != 1:
        raise ValueError(f"a checkpoint holds exactly one model, got {sorted(models) or 'none'}")
    (key, model), = models.items()
    optimizers = {k: _unwrap(v) for k, v in state.items() if isinstance(_unwrap(v), torch.optim.Optimizer)}
    return key, model, optimizers


def split_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DCP state dicts of the model and optimizers, keyed by parameter names; everything else as
    plain values: `state_dict()` of stateful objects)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    key, model, optimizers = _model_and_optimizers(state)
    tensors = {key: get_model_state_dict(model)}
    tensors |= {name: get_optimizer_state_dict(model, optimizer) for name, optimizer in optimizers.items()}
    extras = {
        name: value.state_dict() if hasattr(value, "state_dict") else value
        for name, value in state.items()
        if name not in tensors
    }
    return tensors, extras


def rng_state() -> dict[str, Any]:
    out = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    random.setstate(saved["python"])
    if "cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda"])


def read_config(checkpoint: Path) -> dict:
    return yaml.safe_load((checkpoint / "config.yaml").read_text())


def read_meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "meta.json").read_text())


# Model fields that change how a model runs, not what its weights are.
RUNTIME_ONLY = ("attention.backend", "attention.rotary.max_position", "kernels.", "init_from", "init_std")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_model(checkpoint: Path, model_config: dict) -> None:
    """Refuse, before anything is built, a checkpoint of another model architecture."""
    saved, wanted = _flat(read_config(checkpoint).get("model", {})), _flat(model_config)
    keys = sorted((set(saved) | set(wanted)))
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs config {wanted.get(k)!r}"
        for k in keys
        if not k.startswith(RUNTIME_ONLY) and saved.get(k) != wanted.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {checkpoint} holds a model of another shape: " + "; ".join(diffs),
            where="trainer.resume",
            fix="resume with the model config the checkpoint was trained with, or start a new run folder",
        )


def load(fabric, checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Restore `state` in place, at whatever world size and mesh this run has; returns what the
    checkpoint holds beyond `state` (plain values)."""
    wait_for_pending()
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    key, model, optimizers = _model_and_optimizers(state)
    tensors, _ = split_state(state)  # this run's layout: DCP fills each rank's own shards
    with _single_process_quiet():
        dcp.load(tensors, checkpoint_id=checkpoint / STATE, no_dist=not _distributed())
    set_model_state_dict(model, tensors[key])
    for name, optimizer in optimizers.items():
        set_optimizer_state_dict(model, optimizer, tensors[name])
    extras = torch.load(checkpoint / EXTRAS, map_location="cpu", weights_only=True)
    set_rng_state(extras.pop(RNG_KEY))
    remainder = {}
    for name, value in extras.items():
        if name not in state:
            remainder[name] = value
        elif hasattr(state[name], "load_state_dict"):
            state[name].load_state_dict(value)
        else:
            state[name] = value
    return remainder
