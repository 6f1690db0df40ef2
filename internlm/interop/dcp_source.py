"""Model tensors of a sharded (torch.distributed.checkpoint) checkpoint, read one at a time.

An export or conversion then runs in one CPU process, with no process group and no GPU, holding
one full tensor at a time: a multi-rank checkpoint is never gathered onto one device first.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch

from internlm.errors import ConfigError


def dcp_model_tensors(folder: str | Path, prefix: str = "model.") -> Callable[[], Iterator[tuple[str, torch.Tensor]]]:
    """A source for `export_hf`: (name without ``prefix``, full tensor) for every tensor saved under
    ``prefix`` (Fabric saves the model's state dict under ``model``)."""
    import torch.distributed.checkpoint as dcp  # 0.5 s of imports: only when a checkpoint is read
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder).expanduser()
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{folder} is not a torch.distributed.checkpoint folder ({exc})",
            where="checkpoint",
            fix="pass the 'state' folder of a sharded checkpoint",
        ) from None
    entries = {
        key: item for key, item in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(item, TensorStorageMetadata)
    }
    if not entries:
        raise ConfigError(f"no tensors under {prefix!r} in {folder}", where="checkpoint",
                          fix="pass a checkpoint that holds the model's weights")
    group = prefix.rstrip(".")

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for key, item in entries.items():
            name = key[len(prefix):]
            holder = {group: {name: torch.empty(item.size, dtype=item.properties.dtype)}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no process group": intended, this is one process
                dcp.load(holder, checkpoint_id=str(folder))
            yield name, holder[group][name]

    return tensors
