"""Write a folder under a temporary name and rename it when whole: a crash never leaves a folder
that looks complete, and an existing non-empty folder is never written into."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from internlm.errors import ConfigError


@contextmanager
def staged_folder(out_dir: str | Path, where: str) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it becomes ``out_dir``, on error it is deleted."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(
            f"{out_dir} already exists and is not an empty folder; refusing to overwrite it",
            where=where,
            fix="choose a new folder, or delete the old one first",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a folder on every OS
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
