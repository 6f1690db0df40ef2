"""InternLM's original tokenized format, read as it is (no conversion).

A dataset folder holds ``.bin`` files, each one JSON line ``{"tokens": [...]}`` per sample, with a
``.bin.meta`` beside it: int32 rows ``(byte offset of the line, number of tokens)`` saved by
``np.save`` (a raw int32 file is read too). Conventions kept from the original code:

* a negative id ``-t`` is token ``t`` that carries no loss: the model reads ``abs(id)``, and a
  target whose id is not positive is ``IGNORE_INDEX`` (the original's ``w if w > 0 else -100``;
  its prompt masking for SFT);
* every sample is its own document (positions restart, no target across samples);
* the folder names ``en``, ``cn``, ``code``, ``ja``, ``ar``, ``kaoshi`` anywhere in a file's path
  give its samples the type ids 0..5 (``type_ids``: kept for analysis, the model does not use
  them; -1 when no such folder is in the path).

Samples are parsed on demand from memory-mapped files, so a folder of any size starts at once.
"""

from __future__ import annotations

import json
import mmap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internlm.components.data.base import DataConfig
from internlm.components.data.packing import StreamRows
from internlm.components.data.sampler import RowSetSource
from internlm.errors import ConfigError
from internlm.registry import register

TYPE_IDS = {"en": 0, "cn": 1, "code": 2, "ja": 3, "ar": 4, "kaoshi": 5}  # InternLM's DATASET_TYPE_IDS_MAP
NPY_MAGIC = b"\x93NUMPY"


@dataclass
class InternLMBinConfig(DataConfig):
    path: str = ""  # a folder of InternLM .bin/.bin.meta files (searched recursively; en/cn/code/... set type ids)
    val_path: str = ""  # a second such folder held out for validation (instead of val_fraction)


@register("data", "internlm_bin", InternLMBinConfig)
class InternLMBinData(RowSetSource):
    """InternLM's original .bin/.bin.meta dataset folders, trained on without conversion."""

    def __init__(self, config: InternLMBinConfig, tokenizer):
        self.config = config
        if not config.path:
            raise ConfigError("no dataset folder given", where="data.path", fix="set data.path=<folder of .bin files>")
        self.check_one_holdout(bool(config.val_path), config.val_fraction, "data.val_path")
        self.samples = BinSamples(Path(config.path), tokenizer.vocab_size, "data.path")
        held_out = None
        if config.val_path:
            held_out = BinSamples(Path(config.val_path), tokenizer.vocab_size, "data.val_path").rows(config.seq_len)
        self.use_rows(self.samples.rows(config.seq_len), held_out, config.val_fraction)

    @property
    def type_ids(self) -> np.ndarray:
        """The type id of every sample of data.path, in file order."""
        return self.samples.type_ids


def type_id_of(path: Path) -> int:
    """The type id of the deepest folder in the path named like one of InternLM's types."""
    for part in reversed(path.parent.parts):
        if part in TYPE_IDS:
            return TYPE_IDS[part]
    return -1


def read_meta(meta_path: Path, where: str) -> np.ndarray:
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path} is missing", where=where, fix="every .bin needs its .bin.meta index beside it")
    with open(meta_path, "rb") as handle:
        raw = handle.read()
    try:
        meta = np.load(meta_path) if raw.startswith(NPY_MAGIC) else np.frombuffer(raw, dtype=np.int32).reshape(-1, 2)
    except ValueError as exc:
        raise ConfigError(
            f"{meta_path} is not a (offset, length) int32 table: {exc}", where=where, fix="rebuild the meta file"
        ) from None
    if meta.ndim != 2 or meta.shape[1] != 2:
        raise ConfigError(
            f"{meta_path} has shape {meta.shape}, expected (samples, 2)", where=where, fix="rebuild the meta file"
        )
    return meta.astype(np.int64)


class BinSamples:
    """Every sample of a folder's .bin files, addressable as one token stream.

    ``tokens`` and ``targets`` behave like arrays over the concatenated samples (length, slices),
    parsing only the samples a slice touches (a small cache keeps recent ones).
    """

    def __init__(self, root: Path, vocab_size: int, where: str, cache_size: int = 512):
        root = root.expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"dataset folder not found: {root}", where=where, fix="point data.path at a folder of .bin files"
            )
        self.files = sorted(root.rglob("*.bin"))
        if not self.files:
            raise ConfigError(
                f"no .bin files under {root}", where=where, fix="point data.path at InternLM's tokenized data"
            )
        self.where, self.vocab_size = where, vocab_size
        metas = [read_meta(Path(f"{f}.meta"), where) for f in self.files]
        self.offsets = np.concatenate([m[:, 0] for m in metas])
        self.lengths = np.concatenate([m[:, 1] for m in metas])
        self.file_of = np.concatenate([np.full(len(m), i, dtype=np.int64) for i, m in enumerate(metas)])
        self.type_ids = np.concatenate(
            [np.full(len(m), type_id_of(f), dtype=np.int8) for f, m in zip(self.files, metas)]
        )
        keep = self.lengths > 0
        self.offsets, self.lengths, self.file_of, self.type_ids = (
            a[keep] for a in (self.offsets, self.lengths, self.file_of, self.type_ids)
        )
        if len(self.lengths) == 0:
            raise ConfigError(f"the .bin files under {root} hold no tokens", where=where, fix="check the meta files")
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.total = int(self.lengths.sum())
        self._maps: dict[int, mmap.mmap] = {}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        for first_or_last in {0, len(self.lengths) - 1}:  # a wrong tokenizer or a stale meta shows at once
            self.sample(first_or_last)
        self.tokens = _View(self, np.abs)  # what the model reads
        self.targets = _View(self, _carries_loss)

    def rows(self, seq_len: int) -> StreamRows:
        rows = StreamRows(self.tokens, self.starts, seq_len, targets=self.targets)
        if len(rows) == 0:
            raise ConfigError(
                f"{self.total} tokens are fewer than one row of seq_len + 1 = {seq_len + 1}",
                where=self.where,
                fix="lower data.seq_len or add data",
            )
        return rows

    def sample(self, index: int) -> np.ndarray:
        """The raw ids of one sample (negative = no loss), checked against its meta row and the vocab."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        file_index = int(self.file_of[index])
        data = self._map(file_index)
        start = int(self.offsets[index])
        end = data.find(b"\n", start)
        line = data[start : end if end >= 0 else len(data)]
        where = f"{self.files[file_index]} at byte {start}"
        try:
            ids = np.asarray(json.loads(line)["tokens"], dtype=np.int64)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"bad sample in {where}: {exc!r}", where=self.where, fix="check that the .bin.meta belongs to this .bin"
            ) from None
        if len(ids) != self.lengths[index]:
            raise ConfigError(
                f"sample in {where} has {len(ids)} tokens, its meta row says {self.lengths[index]}",
                where=self.where,
                fix="rebuild the .bin.meta for this file",
            )
        if len(ids) and np.abs(ids).max() >= self.vocab_size:
            raise ConfigError(
                f"sample in {where} has token id {int(np.abs(ids).max())}, beyond the tokenizer's {self.vocab_size} ids",
                where=self.where,
                fix="configure the tokenizer this data was made with",
            )
        self._cache[index] = ids
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ids

    def span(self, start: int, stop: int) -> np.ndarray:
        """Raw ids of stream positions [start, stop)."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts, position = [], start
        index = first
        while position < stop:
            ids = self.sample(index)
            begin = position - int(self.starts[index])
            take = ids[begin : begin + (stop - position)]
            parts.append(take)
            position += len(take)
            index += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _map(self, file_index: int) -> mmap.mmap:
        if file_index not in self._maps:
            with open(self.files[file_index], "rb") as handle:
                self._maps[file_index] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[file_index]

    def __getstate__(self) -> dict:  # memory maps do not pickle (loader workers): reopen lazily
        state = dict(self.__dict__)
        state["_maps"], state["_cache"] = {}, OrderedDict()
        return state


def _carries_loss(ids: np.ndarray) -> np.ndarray:
    return ids > 0  # the original's `w if w > 0 else -100`


class _View:
    """Array-like access to the concatenated samples through a per-id transform."""

    def __init__(self, samples: BinSamples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return self.samples.total

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.samples.total)
        if step != 1:
            raise IndexError("only contiguous slices")
        return self.transform(self.samples.span(start, stop))
