"""Hugging Face weight files: streaming sharded safetensors out, any of HF's layouts in.

Out: tensors arrive one at a time and are written shard by shard, so at most one shard of converted
copies is in memory. In: ``model.safetensors`` or ``pytorch_model.bin``, each whole or sharded with
an index; ``.bin`` files are read with ``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from internlm.errors import ConfigError

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


class ShardedSafetensorsWriter:
    """Collects tensors until the next would push a shard past ``max_shard_bytes``, then writes it.

    `close` names the shards ``model-0000i-of-0000N.safetensors`` with an index, or
    ``model.safetensors`` when one shard holds everything (the layout `save_pretrained` writes).
    """

    def __init__(self, folder: Path, max_shard_bytes: int):
        if max_shard_bytes <= 0:
            raise ConfigError(f"max_shard_bytes must be positive, got {max_shard_bytes}", fix="pass e.g. 2_000_000_000")
        self.folder, self.max_shard_bytes = Path(folder), max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._shards):
            raise ConfigError(f"tensor {name!r} given twice", fix="yield each parameter once")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = _owning(tensor)
        self._pending_bytes += size
        self._total_bytes += size

    def close(self) -> list[Path]:
        """Write what is pending, give the shards their final names; returns the files written."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            final = self.folder / SAFETENSORS_SINGLE
            self._shards[0][0].rename(final)
            return [final]
        weight_map: dict[str, str] = {}
        files = []
        for index, (path, names) in enumerate(self._shards, start=1):
            final = self.folder / f"model-{index:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            files.append(final)
            weight_map.update({name: final.name for name in names})
        index_json = {"metadata": {"total_size": self._total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index_json, indent=2) + "\n")
        return files + [self.folder / SAFETENSORS_INDEX]

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})  # "pt": transformers insists on it
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0


def _owning(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor that owns its storage: safetensors refuses views into shared memory."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face checkpoint folder, safetensors preferred."""
    folder = Path(folder)
    for index_name, single_name in ((SAFETENSORS_INDEX, SAFETENSORS_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        if (folder / index_name).is_file():
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConfigError(
                    f"{index_name} names files that are not there: {', '.join(missing)}",
                    where=str(folder),
                    fix="copy the whole checkpoint folder, every shard included",
                )
            return files
        if (folder / single_name).is_file():
            return [folder / single_name]
    present = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "(no such folder)"
    raise ConfigError(
        f"no Hugging Face weights in {folder}",
        where=str(folder),
        fix=f"point at a folder with {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {BIN_SINGLE} or {BIN_INDEX}; "
        f"it holds: {present}",
    )


def read_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every tensor of the checkpoint, one file at a time."""
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            tensors = load_torch_file(path)
        yield from tensors.items()


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save'd dict of tensors, never unpickling arbitrary objects; memory-mapped when the
    file's format allows (zip files, torch >= 1.6), so only what is used gets read."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path} holds more than tensors and was not loaded (weights_only=True): {str(exc).splitlines()[0]}",
            where=str(path),
            fix="re-save it as a plain dict of tensors, or convert it to safetensors",
        ) from None
