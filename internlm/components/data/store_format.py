"""The token store on disk: what `task=prepare_data` writes and `data=store` reads.

::

    <store>/manifest.json             what is in the store; rewritten atomically after every shard
    <store>/shard-00000.tokens.npy    the shard's documents as one token stream, [BOS] ids EOS each
    <store>/shard-00000.docs.npy      int64 offset of each document's first token (document index)

Both arrays are ``.npy`` files, memory-mapped when read. The manifest records the tokenizer
(sha256 of its model file, vocab size), the plan (which input bytes go to which shard), and for
every finished shard its token and document counts and the size and sha256 of each file. A shard
exists only once its manifest entry is committed: files written but not yet recorded (a kill
between the two) are redone by the next run, so a half-written shard never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from internlm.errors import ConfigError

FORMAT = "internlm.token_store"
VERSION = 1
MANIFEST = "manifest.json"


def shard_files(index: int) -> dict[str, str]:
    return {"tokens": f"shard-{index:05d}.tokens.npy", "docs": f"shard-{index:05d}.docs.npy"}


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside the target, flush to disk, then rename over it: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_array_atomic(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Save an .npy file atomically; returns its manifest record (name, bytes, sha256)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    record = {"name": path.name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    os.replace(tmp, path)
    return record


def write_manifest(store: Path, manifest: dict) -> None:
    write_atomic(store / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def read_manifest(store: Path, where: str) -> dict:
    path = store / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{store} is not a token store (no {MANIFEST})",
            where=where,
            fix="make one with: python -m internlm task=prepare_data task.input=<files> task.output=<dir>",
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is corrupt: {exc}", where=where, fix="prepare the store again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(
            f"{store} holds format {manifest.get('format')} v{manifest.get('version')}, expected {FORMAT} v{VERSION}",
            where=where,
            fix="prepare the store again with this version of internlm",
        )
    return manifest


def shard_is_intact(store: Path, entry: dict, checksum: bool = False) -> bool:
    """The shard's files exist with the recorded sizes (and sha256 when asked)."""
    for record in entry["files"].values():
        path = store / record["name"]
        if not path.is_file() or path.stat().st_size != record["bytes"]:
            return False
        if checksum and sha256_file(path) != record["sha256"]:
            return False
    return True


def tokenizer_record(tokenizer) -> dict:
    return {
        "identity": tokenizer.identity,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }
