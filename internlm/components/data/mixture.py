"""Weighted mixtures of named sources, sampled in exact proportions, deterministic for a seed.

The global sample stream is cut into blocks of ``L`` samples. Each block holds every source ``s``
exactly ``c_s`` times (``c_s / L`` = its normalised weight, rounded by largest remainder), in an
order shuffled per block with the seed. So the proportions sampled match the weights within one
block at any point of the run, and sample ``g`` maps to source ``s`` and that source's own
sample number ``j`` in O(1): ``j = block * c_s + (times s came earlier in the block)``. Each
source then walks its own seeded epochs (`sampler.ShuffledRows`) independently of the others.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from internlm.components.data.base import DataConfig
from internlm.components.data.internlm_bin import InternLMBinConfig, InternLMBinData
from internlm.components.data.store import StoreData, StoreDataConfig
from internlm.components.data.text import TextData, TextDataConfig
from internlm.components.data.packing import ConcatRows, Rows, gather_rows
from internlm.components.data.sampler import SEED_MASK, GlobalLoader, RowSetSource, ShuffledRows
from internlm.errors import ConfigError
from internlm.registry import register

FORMATS = ("auto", "store", "internlm_bin", "text")
MIN_BLOCK = 1000


@dataclass
class MixtureSourceConfig:
    path: str = ""  # a token store folder, an InternLM .bin folder, or .jsonl/.txt files (a glob)
    weight: float = 1.0  # share of the samples (weights are normalised to sum to 1)
    format: str = "auto"  # auto | store | internlm_bin | text (auto: manifest.json -> store, *.bin -> internlm_bin)
    text_field: str = "text"  # JSONL key of a document (format text)


@dataclass
class MixtureDataConfig(DataConfig):
    # name -> {path, weight, format, text_field}; typed loosely so the command line can add sources
    # (`+data.sources.web={path: store/web, weight: 0.6}`), checked against MixtureSourceConfig below
    sources: dict[str, Any] = field(default_factory=dict)


def detect_format(path: str) -> str:
    folder = Path(path).expanduser()
    if (folder / "manifest.json").is_file():
        return "store"
    if folder.is_dir() and next(folder.rglob("*.bin"), None) is not None:
        return "internlm_bin"
    return "text"


def build_source(name: str, source: MixtureSourceConfig, config: MixtureDataConfig, tokenizer) -> RowSetSource:
    """One source as its own data component (seq_len and val_fraction from the mixture)."""

    where = f"data.sources.{name}"
    if not source.path:
        raise ConfigError(
            f"source {name!r} has no path", where=f"{where}.path", fix="give it a store, .bin folder or files"
        )
    if source.format not in FORMATS:
        raise ConfigError(
            f"unknown format {source.format!r}", where=f"{where}.format", fix=f"use one of {', '.join(FORMATS)}"
        )
    kind = detect_format(source.path) if source.format == "auto" else source.format
    common = {"seq_len": config.seq_len, "val_fraction": config.val_fraction}
    try:
        if kind == "store":
            return StoreData(StoreDataConfig(path=source.path, **common), tokenizer)
        if kind == "internlm_bin":
            return InternLMBinData(InternLMBinConfig(path=source.path, **common), tokenizer)
        return TextData(TextDataConfig(paths=[source.path], text_field=source.text_field, **common), tokenizer)
    except ConfigError as err:  # name the source, not the single-source key
        raise ConfigError(err.what, where=f"{where} ({kind})", fix=err.fix) from None


def block_counts(weights: np.ndarray) -> np.ndarray:
    """Samples per block for each source: largest remainder of ``weights * L``, every source >= 1."""
    block = max(MIN_BLOCK, math.ceil(10 / weights.min()))
    exact = weights * block
    counts = np.floor(exact).astype(np.int64)
    short = block - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


class MixtureStream:
    """The global stream of a mixture (see the module docstring)."""

    def __init__(self, names: list[str], streams: list[ShuffledRows], weights: list[float], seed: int):
        self.names, self.streams, self.seed = names, streams, seed
        self.seq_len = streams[0].seq_len
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.counts = block_counts(self.weights)
        self.block = int(self.counts.sum())
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def schedule(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, times that source came earlier in the block)."""
        if block not in self._blocks:
            if len(self._blocks) >= 4:
                self._blocks.pop(min(self._blocks))
            order = np.random.default_rng([self.seed & SEED_MASK, block, 0x313]).permutation(
                np.repeat(np.arange(len(self.counts)), self.counts)
            )
            rank = np.empty_like(order)
            for source in range(len(self.counts)):
                where = order == source
                rank[where] = np.arange(int(where.sum()))
            self._blocks[block] = (order, rank)
        return self._blocks[block]

    def locate(self, global_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, that source's sample number) of each global sample."""
        global_indices = np.asarray(global_indices, dtype=np.int64)
        blocks, positions = np.divmod(global_indices, self.block)
        sources, local = np.empty_like(global_indices), np.empty_like(global_indices)
        for block in np.unique(blocks):
            sel = blocks == block
            order, rank = self.schedule(int(block))
            sources[sel] = order[positions[sel]]
            local[sel] = block * self.counts[sources[sel]] + rank[positions[sel]]
        return sources, local

    def rows_at(self, global_indices: np.ndarray) -> Rows:
        sources, local = self.locate(global_indices)
        row_of = np.empty_like(local)
        for source in np.unique(sources):
            sel = sources == source
            row_of[sel] = self.streams[int(source)].row_indices(local[sel])
        return gather_rows([s.rows for s in self.streams], sources, row_of, self.seq_len)

    def sampled_counts(self, consumed: int) -> np.ndarray:
        full, partial = divmod(consumed, self.block)
        order, _ = self.schedule(full)
        return full * self.counts + np.bincount(order[:partial], minlength=len(self.counts))

    def proportions(self, consumed: int) -> dict[str, float]:
        counts = self.sampled_counts(consumed)
        return {name: float(c) / max(consumed, 1) for name, c in zip(self.names, counts)}

    def fingerprint(self) -> dict:
        return {
            "sources": {n: s.fingerprint() for n, s in zip(self.names, self.streams)},
            "counts": self.counts.tolist(),
            "seed": self.seed,
        }

    def metrics(self, consumed: int) -> dict[str, float]:
        return {f"data/mix/{name}": share for name, share in self.proportions(consumed).items()}


def typed_source(name: str, source: Any) -> MixtureSourceConfig:
    if isinstance(source, MixtureSourceConfig):
        return source
    try:
        merged = OmegaConf.merge(OmegaConf.structured(MixtureSourceConfig), source)
        return OmegaConf.to_object(merged)
    except Exception as exc:  # unknown key, wrong type, not a mapping
        raise ConfigError(
            f"source {name!r} of the mixture is not {{path, weight, format, text_field}}: {exc}".splitlines()[0],
            where=f"data.sources.{name}",
            fix="e.g. +data.sources.web={path: store/web, weight: 0.6}",
        ) from None


@register("data", "mixture", MixtureDataConfig)
class MixtureData(RowSetSource):
    """Named sources (token stores, InternLM .bin folders, text files) mixed by weight."""

    def __init__(self, config: MixtureDataConfig, tokenizer):
        if not config.sources:
            raise ConfigError(
                "a mixture needs sources", where="data.sources", fix="+data.sources.web={path: ..., weight: 0.6} (one per source)"
            )
        config = dataclasses.replace(config, sources={n: typed_source(n, s) for n, s in config.sources.items()})
        self.config = config
        for name, source in config.sources.items():
            if not source.weight > 0:
                raise ConfigError(
                    f"weight {source.weight} of source {name!r} is not positive",
                    where=f"data.sources.{name}.weight",
                    fix="give every source a weight > 0 (or drop it)",
                )
        self.names = list(config.sources)
        self.parts = {name: build_source(name, source, config, tokenizer) for name, source in config.sources.items()}
        self.weights = [config.sources[name].weight for name in self.names]
        vals = [p.val_rows for p in self.parts.values() if p.val_rows is not None and len(p.val_rows)]
        self.train_rows = ConcatRows([p.train_rows for p in self.parts.values()])
        self.val_rows = ConcatRows(vals) if vals else None
        self._loader: GlobalLoader | None = None

    def train_stream(self, seed: int) -> MixtureStream:
        # each source gets its own seed, derived from the run's seed and the source's name
        streams = [ShuffledRows(self.parts[n].train_rows, (seed << 32) + zlib.crc32(n.encode())) for n in self.names]
        return MixtureStream(self.names, streams, self.weights, seed)

    def train_loader(self, *, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int) -> GlobalLoader:
        self._loader = super().train_loader(
            micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size, seed=seed
        )
        return self._loader

    def sampled_proportions(self) -> dict[str, float]:
        """Share of each source among the global samples the (last made) training loader consumed."""
        if self._loader is None:
            return {}
        return self._loader.stream.proportions(self._loader.consumed)
