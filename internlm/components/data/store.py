"""Training on a token store made by `task=prepare_data` (memory-mapped, any size).

Each shard is its own token stream cut into rows (`packing.py`); a row never spans two shards,
which leaves out less than one row per shard. The store is refused before training when it was
tokenized by another tokenizer than the configured one, or is unfinished.

Shards are checked against the manifest's sha256 lazily: once per shard and process, when its
first row is read. Opening stays a stat per file (a store of thousands of shards opens at once),
a 16 MB shard costs ~20 ms of hashing once, and a byte flipped on disk after the store was written
is still found (a cache keyed by size and mtime would trust it). A damaged shard stops the run
with its path; nothing is rewritten. ``data.verify_checksums=true`` checks every shard up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internlm.components.data import store_format as fmt
from internlm.components.data.base import DataConfig
from internlm.components.data.packing import ConcatRows, StreamRows
from internlm.components.data.sampler import RowSetSource
from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class StoreDataConfig(DataConfig):
    path: str = ""  # a token store folder written by task=prepare_data
    val_path: str = ""  # a second store held out for validation (instead of val_fraction)
    verify_checksums: bool = False  # sha256 every shard at start-up (reads the whole store once)


@register("data", "store", StoreDataConfig)
class StoreData(RowSetSource):
    """A prepared token store (task=prepare_data), memory-mapped and packed into rows of seq_len."""

    def __init__(self, config: StoreDataConfig, tokenizer):
        self.config = config
        if not config.path:
            raise ConfigError(
                "no token store given", where="data.path", fix="set data.path=<folder made by task=prepare_data>"
            )
        self.check_one_holdout(bool(config.val_path), config.val_fraction, "data.val_path")
        rows = open_store(Path(config.path), tokenizer, config.seq_len, "data.path", config.verify_checksums)
        held_out = None
        if config.val_path:
            held_out = open_store(
                Path(config.val_path), tokenizer, config.seq_len, "data.val_path", config.verify_checksums
            )
        self.use_rows(rows, held_out, config.val_fraction)


def open_store(store: Path, tokenizer, seq_len: int, where: str, verify: bool = False) -> ConcatRows:
    """The rows of a finished store, after checking it was made with this tokenizer."""
    store = store.expanduser()
    manifest = fmt.read_manifest(store, where)
    if not manifest.get("complete"):
        raise ConfigError(
            f"token store {store} is unfinished (prepare_data was interrupted)",
            where=where,
            fix="run the same prepare_data command again: it resumes where it stopped",
        )
    check_tokenizer(manifest["tokenizer"], tokenizer, store, where)
    parts = []
    for index in range(len(manifest["plan"])):
        entry = manifest["shards"][str(index)]
        if not fmt.shard_is_intact(store, entry):  # sizes: a stat each
            raise ConfigError(
                f"shard {index} of {store} is missing or truncated",
                where=where,
                fix="prepare the store again (task.overwrite=true)",
            )
        if entry["tokens"] <= seq_len:
            continue  # too short for one row
        shard = CheckedShard(store, entry, seq_len, where)
        if verify:
            shard.rows()
        parts.append(shard)
    if not parts:
        raise ConfigError(
            f"token store {store} has no shard of at least seq_len + 1 = {seq_len + 1} tokens",
            where=where,
            fix="lower data.seq_len or prepare more text",
        )
    return ConcatRows(parts)


class CheckedShard:
    """One shard's rows, its files hashed against the manifest before the first row is read."""

    def __init__(self, store: Path, entry: dict, seq_len: int, where: str):
        self.store, self.entry, self.seq_len, self.where = store, entry, seq_len, where
        self._rows: StreamRows | None = None

    def __len__(self) -> int:
        return max(0, (self.entry["tokens"] - 1) // self.seq_len)  # as StreamRows counts them

    def get(self, rows: np.ndarray):
        return self.rows().get(rows)

    def rows(self) -> StreamRows:
        if self._rows is None:
            files = self.entry["files"]
            for record in files.values():
                path = self.store / record["name"]
                if fmt.sha256_file(path) != record["sha256"]:
                    raise ConfigError(
                        f"token store shard {path} is corrupt: its sha256 differs from the manifest's",
                        where=self.where,
                        fix="restore the file from a copy, or prepare the store again (task.overwrite=true)",
                    )
            tokens = np.load(self.store / files["tokens"]["name"], mmap_mode="r")
            starts = np.load(self.store / files["docs"]["name"], mmap_mode="r")
            self._rows = StreamRows(tokens, starts, self.seq_len)
        return self._rows


def check_tokenizer(recorded: dict, tokenizer, store: Path, where: str) -> None:
    if recorded["identity"] == tokenizer.identity:
        return
    raise ConfigError(
        f"token store {store} was made with another tokenizer (vocab {recorded['vocab_size']}, "
        f"sha256 {recorded['identity'][:12]}...) than the configured one (vocab {tokenizer.vocab_size}, "
        f"sha256 {tokenizer.identity[:12]}...)",
        where=where,
        fix="set tokenizer.path to the model the store was prepared with, or prepare the store again",
    )
