"""Checkpoints in the run folder: sharded, reshardable, written atomically, found again by
`trainer.resume=auto`.

Layout of ``<run>/checkpoints/step-00000100/``:

* ``state/``: model and optimizer as a torch.distributed.checkpoint (DCP) folder. Every rank writes
  its own shards (FSDP2 / tensor-parallel DTensors), replicated tensors once; it loads back into any
  world size or mesh (DCP reads each rank's region from whatever chunks were written), and into a
  plain one-device model (the same code path runs without a process group).
* ``extras.pt``: everything else (scheduler, data loader position, step, RNG) written once, by
  rank 0: a loader's state is a position on the global sample stream, the same on every rank.
* ``config.yaml`` (the resolved config: a checkpoint is self-describing) and ``meta.json``, which
  lists every other file with its size and SHA-256: resume verifies them and falls back to the
  newest checkpoint that is whole, naming the damaged file (a damaged one is renamed
  ``corrupt-step-N`` so it is neither used nor pruned in place of a good one).

A checkpoint is written under a temporary name and renamed when complete (``meta.json`` is the
last file written): a crash mid-save leaves the previous one intact and never a folder that looks
complete. With ``async_save`` the tensors are copied off the parameters at once and written in a
background thread; the rename happens when every rank's write has ended, at the next save or at
`wait_for_pending()`. Only the newest ``keep`` checkpoints are kept, never deleting the one just
committed. A failed write (ENOSPC, EIO) removes its partial folder and stops the run with one
message; the previous checkpoint is untouched.

While a run trains, rank 0 holds an exclusive lock on ``<run>/.lock`` (released by the kernel
even on kill -9): a second process on the same folder is refused with the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from internlm.errors import ConfigError
from internlm.runtime import faults
from internlm.runtime.lost_peer import PEER_LOST, lost_peer

log = logging.getLogger("internlm")

PREFIX = "step-"
CORRUPT_PREFIX = "corrupt-"  # a damaged checkpoint, set aside by resume (kept for inspection)
LOCK = ".lock"
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


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _inventory(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every file under `folder`, meta.json excepted."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "meta.json"):
        out[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    return out


_VERIFIED: dict[tuple[str, int], str | None] = {}  # (meta.json path, its mtime) -> problem; each checkpoint is hashed once per process


def damage(checkpoint: Path) -> str | None:
    """None when every file meta.json lists is present with its size and checksum; else what is
    wrong, naming the file. (Checkpoints written before checksums existed are taken as whole.)"""
    meta_path = checkpoint / "meta.json"
    try:
        key = (str(meta_path.resolve()), meta_path.stat().st_mtime_ns)
    except OSError as exc:
        return f"{meta_path} cannot be read ({exc.strerror})"
    if key in _VERIFIED:
        return _VERIFIED[key]
    try:
        files = json.loads(meta_path.read_text()).get("files")
    except (OSError, ValueError) as exc:
        problem = f"{meta_path} is damaged ({exc})"
    else:
        problem = None
        for name, expected in (files or {}).items():
            path = checkpoint / name
            if not path.is_file():
                problem = f"{path} is missing"
            elif path.stat().st_size != expected["bytes"]:
                problem = f"{path} is truncated or damaged: {path.stat().st_size} bytes, {expected['bytes']} written"
            elif file_digest(path) != expected["sha256"]:
                problem = f"{path} is corrupt: its SHA-256 differs from the one written"
            if problem:
                break
    _VERIFIED[key] = problem
    return problem


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint so it is never picked again, nor counted as a good one."""
    target = checkpoint.with_name(CORRUPT_PREFIX + checkpoint.name)
    if target.exists():
        shutil.rmtree(target)
    checkpoint.rename(target)
    return target


def newest_good(candidates: list[Path], set_aside_bad: bool) -> Path | None:
    """The newest checkpoint that verifies; each damaged newer one is reported (and set aside)."""
    for found in reversed(candidates):
        problem = damage(found)
        if problem is None:
            return found
        moved = set_aside(found) if set_aside_bad else None
        log.warning(
            "checkpoint %s is damaged: %s; %s, falling back to an older checkpoint",
            found, problem, f"renamed to {moved.name}" if moved else "skipped",
        )
    return None


def find_checkpoint(spec: str, run_dir: Path) -> Path | None:
    """`auto` -> newest complete, verified checkpoint of this run (None if there is none yet;
    an error if there are some but none is whole); a path -> that checkpoint, verified, or the
    newest good one of that run folder."""
    if spec == "auto":
        found = complete_checkpoints(run_dir)
        good = newest_good(found, set_aside_bad=False)
        if found and good is None:
            _refuse_all_damaged(found)
        return good
    path = Path(spec)
    if (path / "meta.json").is_file():
        problem = damage(path)
        if problem:
            raise ConfigError(
                f"checkpoint {path} is damaged: {problem}",
                where="trainer.resume / checkpoint",
                fix="pass an older checkpoint of that run (or its run folder, which picks the newest good one)",
            )
        return path
    found = complete_checkpoints(path)
    if found:
        good = newest_good(found, set_aside_bad=False)
        if good is None:
            _refuse_all_damaged(found)
        return good
    raise ConfigError(
        f"no complete checkpoint at '{spec}'",
        where="trainer.resume / checkpoint",
        fix="pass a checkpoint folder (…/checkpoints/step-N) or a run folder that has one",
    )


def _refuse_all_damaged(found: list[Path]) -> None:
    raise ConfigError(
        f"every checkpoint in {found[0].parent} is damaged; the newest: {damage(found[-1])}",
        where="trainer.resume",
        fix="restore the named files from a copy, or start over in a new run folder (trainer.resume=null)",
    )


def set_aside_damaged(run_dir: Path) -> Path | None:
    """Resume's own pick: like find_checkpoint('auto'), but damaged newer checkpoints are renamed
    out of the way, so that pruning counts only good ones. Rank 0 only."""
    found = complete_checkpoints(run_dir)
    if found and all(damage(p) for p in found):
        _refuse_all_damaged(found)  # never fall back silently to step 0
    return newest_good(found, set_aside_bad=True)


def is_launch_rank_zero(environ=os.environ) -> bool:
    """This process is global rank 0 of its launch, judged from the launcher's variables (torchrun,
    Slurm, Fabric's subprocess launcher): only it takes the run folder's lock."""
    return all(environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class RunFolderLock:
    """An exclusive flock on <run>/.lock holding the owner's pid and host; the kernel drops it when
    the process ends, however it ends, so a killed run never leaves a stale lock. Re-entrant within
    a process (the CLI, the program and the training loop each take it; flock would refuse a second
    open of the same file by its own holder)."""

    _held: dict[Path, list] = {}  # resolved lock path -> [open handle, depth]

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.key: Path | None = None

    def acquire(self) -> "RunFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in self._held:
            self._held[key][1] += 1
            self.key = key
            return self
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise ConfigError(
                f"the run folder {self.path.parent} is in use by {holder}",
                where="hydra.run.dir",
                fix="wait for that run to end (or stop it), or use another hydra.run.dir",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._held[key] = [handle, 1]
        self.key = key
        return self

    def release(self) -> None:
        if self.key is None:
            return
        held = self._held[self.key]
        held[1] -= 1
        if held[1] == 0:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            held[0].close()
            del self._held[self.key]
        self.key = None


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
    _async_process_group(OmegaConf.select(config, "trainer.collective_timeout_s", default=None))  # made once, here
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.partial"
    if fabric.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    fabric.barrier()
    failure: BaseException | None = None
    injected: OSError | None = None  # an async save's injected fault, raised when its write is collected
    try:
        tensors, extras = split_state(state)
        if fabric.is_global_zero:
            torch.save(extras | {RNG_KEY: rng_state()}, tmp / EXTRAS)
            (tmp / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
        injected = faults.during_checkpoint_write(config, step, getattr(fabric, "global_rank", 0))
        if injected is not None and not async_save:
            raise injected
    except OSError as exc:
        failure = exc
    # Every rank learns whether any rank failed before the collective DCP write starts: a rank that
    # stopped alone would leave the others waiting in it.
    failed_ranks = _ranks_that_failed(failure is not None)
    if failed_ranks:
        _write_failed(tmp, step, run_dir, failure or OSError(f"rank {failed_ranks[0]} could not write its part"))
    commit = functools.partial(_commit, tmp, final, run_dir, step, components, keep) if fabric.is_global_zero else None
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        if async_save:
            future = dcp.async_save(tensors, checkpoint_id=tmp / STATE, process_group=_async_process_group(), no_dist=not _distributed())
            if injected is not None:
                future = faults.FailWhenCollected(future, injected)
            _PENDING.append(_PendingSave(future, commit, tmp, step))
            return final
        with _single_process_quiet():
            # returns once every rank's shards and the metadata are written; a rank's failure
            # reaches every rank (DCP gathers the results), so all ranks stop here together
            dcp.save(tensors, checkpoint_id=tmp / STATE, no_dist=not _distributed())
    except (OSError, CheckpointException) as exc:
        _write_failed(tmp, step, run_dir, exc)
    if commit is not None:
        commit()
    fabric.barrier()
    return final


def _ranks_that_failed(failed: bool) -> list[int]:
    """The global ranks (in order) whose part of a checkpoint write failed; every rank gets the
    same list. On the side gloo group (CPU tensors, whatever the training backend)."""
    if not _distributed():
        return [0] if failed else []
    import torch.distributed as dist

    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32)
    flags[dist.get_rank()] = int(failed)
    dist.all_reduce(flags, group=_async_process_group())
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def _write_failed(tmp: Path, step: int, run_dir: Path, exc: BaseException, background: bool = False) -> None:
    """Drop the partial folder (the previous checkpoints are untouched) and stop with one message.
    Every rank stops (they agreed on the failure); rank 0 removes the folder. A write that failed
    because another rank died inside it (DCP gathers every rank's result) is no disk's fault: it
    stops as a lost peer (a RuntimeError the program reports as one), not as a write failure."""
    if not _distributed() or _global_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if lost_peer(exc):
        first = next((line for line in str(exc).splitlines() if any(t in line for t in PEER_LOST)), str(exc).strip())
        raise RuntimeError(f"writing checkpoint {step}: another rank stopped during the write ({first})") from exc
    previous = complete_checkpoints(run_dir)
    kept = f"the newest checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint exists"
    raise ConfigError(
        f"writing checkpoint {step} failed{' in the background' if background else ''} ({exc}); its partial files were removed and {kept}",
        where=str(checkpoint_root(run_dir)),
        fix="free disk space or fix the file system, then continue with trainer.resume=auto",
    ) from exc


def _commit(tmp: Path, final: Path, run_dir: Path, step: int, components: dict[str, str], keep: int) -> None:
    """Rank 0, once every shard is on disk: record each file's checksum, mark complete, rename into
    place, prune old ones (never the one just committed)."""
    meta = {"step": step, "components": components, "files": _inventory(tmp)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _fsync_tree(tmp)
    old = final.with_name(f".{final.name}.replaced")
    if final.exists():  # a rerun of the same step: keep the old one until the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    if keep > 0:
        # Only checkpoints up to this step count: a newer one left by an abandoned future (resume
        # from an older path) never pushes out the one just written.
        earlier = [p for p in complete_checkpoints(run_dir) if p.name <= final.name]
        for stale in earlier[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush every file to stable storage before the rename publishes the checkpoint."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@dataclass
class _PendingSave:
    future: Any  # concurrent.futures.Future of DCP's background write
    commit: Callable[[], None] | None  # rank 0's rename, run when the write is done
    tmp: Path  # the partial folder, removed if the write failed
    step: int


_PENDING: list[_PendingSave] = []
_ASYNC_GROUP: list[Any] = []


def _global_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _async_process_group(timeout_s: float | None = None):
    """A separate gloo group for the background writer's collectives, so they never interleave
    with the training collectives of the main thread (created once, by every rank, at the first
    save). `timeout_s`: trainer.collective_timeout_s: a new group does not inherit the world
    group's timeout, and a rank frozen inside a checkpoint write would otherwise be waited for
    torch's 30 minutes."""
    import datetime

    import torch.distributed as dist

    if not _distributed():
        return None
    if not _ASYNC_GROUP:
        timeout = None if timeout_s is None else datetime.timedelta(seconds=float(timeout_s))
        _ASYNC_GROUP.append(dist.new_group(backend="gloo", timeout=timeout))
    return _ASYNC_GROUP[0]


def wait_for_pending() -> None:
    """Block until an asynchronous save has been written by every rank, then commit it. Call
    before exiting."""
    while _PENDING:
        pending = _PENDING.pop()
        failure: BaseException | None = None
        try:
            pending.future.result()
        except Exception as exc:  # OSError, or DCP's CheckpointException wrapping one
            failure = exc
        # This rank's write ended; commit only once every rank's has, and only if none failed.
        failed_ranks = _ranks_that_failed(failure is not None)
        if failed_ranks:
            run_dir = pending.tmp.parent.parent
            _write_failed(pending.tmp, pending.step, run_dir, failure or OSError(f"rank {failed_ranks[0]} could not write its part"),
                          background=True)
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
    try:
        extras = torch.load(checkpoint / EXTRAS, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only: an object that is not plain data is refused, never run
        raise ConfigError(
            f"{checkpoint / EXTRAS} holds objects that are not plain data (refused, nothing executed): {str(exc).splitlines()[0]}",
            where="trainer.resume",
            fix="resume only from checkpoints this program wrote; pass an older checkpoint of the run",
        ) from None
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
