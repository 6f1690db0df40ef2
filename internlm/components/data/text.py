"""Small text corpora, tokenized in memory when the run starts (the bundled corpus, quick experiments).

Documents (JSONL lines or whole text files, see `documents.py`) become ``[BOS] ids EOS``, joined
in one stream and packed into rows (`packing.py`). For corpora beyond a few hundred MB, prepare a
token store once (``task=prepare_data``) and train with ``data=store``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from internlm import paths
from internlm.components.data.base import DataConfig
from internlm.components.data.documents import DocumentPolicy, read_documents, resolve_files
from internlm.components.data.encoding import encode_documents
from internlm.components.data.packing import StreamRows
from internlm.components.data.sampler import RowSetSource
from internlm.errors import ConfigError
from internlm.registry import register

log = logging.getLogger(__name__)


@dataclass
class TextDataConfig(DataConfig):
    paths: list[str] = field(default_factory=list)  # .jsonl/.txt files, folders or globs; empty = the bundled corpus
    val_paths: list[str] = field(default_factory=list)  # held-out files for validation (instead of val_fraction)
    text_field: str = "text"  # JSONL key that holds a document
    add_bos: bool = True  # start every document with BOS, as prompts at generation time do
    max_chars: int = 0  # documents longer than this are bad input; 0 = no limit
    on_error: str = "fail"  # bad documents: fail (file:line and reason) | skip (counted, reported)


def bundled_corpus() -> list[str]:
    return [str(p) for p in sorted(paths.CORPUS_DIR.glob("*.jsonl"))]


@register("data", "text", TextDataConfig)
class TextData(RowSetSource):
    """JSONL or text files tokenized at start-up, packed into rows of seq_len with document boundaries."""

    def __init__(self, config: TextDataConfig, tokenizer):
        self.config = config
        self.check_one_holdout(bool(config.val_paths), config.val_fraction, "data.val_paths")
        rows = self._rows(self._files(config.paths or bundled_corpus(), "data.paths"), tokenizer, "data.paths")
        held_out = None
        if config.val_paths:
            held_out = self._rows(self._files(config.val_paths, "data.val_paths"), tokenizer, "data.val_paths")
        self.use_rows(rows, held_out, config.val_fraction)

    def _files(self, patterns: list[str], where: str) -> list[Path]:
        if not patterns:
            raise ConfigError(
                f"no corpus files in {paths.CORPUS_DIR}", where=where, fix="set data.paths=[<file.jsonl>]"
            )
        return resolve_files(patterns, where)

    def _rows(self, files: list[Path], tokenizer, where: str) -> StreamRows:
        tokens, doc_starts = tokenized(files, tokenizer, self.config, where)
        rows = StreamRows(tokens, doc_starts, self.config.seq_len)
        if len(rows) == 0:
            raise ConfigError(
                f"the corpus has {len(tokens)} tokens, fewer than one row of seq_len + 1 = {self.config.seq_len + 1}",
                where=where,
                fix="add text or lower data.seq_len",
            )
        return rows


# Tokenizing is the slow part and a run may build its data twice (plan, then train): keep a few.
_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_CACHE_SIZE = 4


def tokenized(files: list[Path], tokenizer, config: TextDataConfig, where: str) -> tuple[np.ndarray, np.ndarray]:
    stats = tuple((str(f.resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    key = (stats, tokenizer.identity, config.text_field, config.add_bos, config.max_chars, config.on_error)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    policy = DocumentPolicy(config.on_error, where)
    documents = read_documents(files, text_field=config.text_field, max_chars=config.max_chars, policy=policy)
    if policy.skipped:
        log.warning(
            "skipped bad documents in %s: %s (e.g. %s)", where, dict(policy.skipped), "; ".join(policy.examples)
        )
    if not documents:
        raise ConfigError(
            f"no documents in {', '.join(map(str, files))}: every line was blank or skipped ({dict(policy.skipped) or 'all blank'})",
            where=where,
            fix=f"give the files text, and check that data.text_field (now '{config.text_field}') names the text field "
            f"and data.max_chars (now {config.max_chars}) is not below your documents' length",
        )
    result = encode_documents(tokenizer, documents, add_bos=config.add_bos)
    _CACHE[key] = result
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result
