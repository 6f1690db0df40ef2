"""Tokenize raw text once into a sharded token store that `data=store` trains on.

``python -m internlm task=prepare_data task.input='[corpus/*.jsonl]' task.output=data/store``

Runs on worker processes (all cores by default) with a progress bar in tokens/s, and resumes: run
the same command again after an interruption and only the unfinished shards are redone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from internlm.components.data.documents import check_on_error, resolve_files
from internlm.components.data.store_writer import Settings, write_store
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.tasks.base import Task

log = logging.getLogger("internlm")


@dataclass
class PrepareDataConfig:
    input: list[str] = field(default_factory=list)  # .jsonl/.txt files, folders or globs (a .txt file is one document)
    output: str = ""  # the store folder (created; a rerun with the same inputs resumes it)
    text_field: str = "text"  # JSONL key that holds a document
    on_error: str = "fail"  # bad documents: fail (file:line and reason) | skip (counted per reason)
    max_chars: int = 10_000_000  # longer documents are bad input; 0 = no limit
    add_bos: bool = True  # start every document with BOS
    workers: int = 0  # worker processes; 0 = one per core
    shard_mb: float = 16.0  # input megabytes per shard (the unit of parallel work and of resuming)
    overwrite: bool = False  # replace a store in `output` that was made from other inputs or settings
    progress: bool = True  # show a progress bar with tokens/s


def prepare_data(config: PrepareDataConfig, tokenizer) -> dict:
    """Prepare (or finish) the store; returns a summary: documents, tokens, shards, skipped per
    reason, seconds and tokens/s of this run."""
    if not config.input:
        raise ConfigError("no input files given", where="task.input", fix="set task.input='[data/*.jsonl]'")
    if not config.output:
        raise ConfigError("no output folder given", where="task.output", fix="set task.output=<folder>")
    if config.shard_mb <= 0:
        raise ConfigError(f"shard_mb must be positive, got {config.shard_mb}", where="task.shard_mb", fix="e.g. 32")
    check_on_error(config.on_error, "task.on_error")
    files = resolve_files(config.input, "task.input")
    settings = Settings(
        text_field=config.text_field,
        add_bos=config.add_bos,
        max_chars=config.max_chars,
        on_error=config.on_error,
        shard_bytes=max(1, int(config.shard_mb * (1 << 20))),
    )
    summary = write_store(
        files,
        Path(config.output).expanduser(),
        tokenizer,
        settings,
        workers=config.workers,
        overwrite=config.overwrite,
        progress=config.progress,
    )
    log.info(
        "token store %s: %d documents, %d tokens in %d shards (%d reused), %s tokens/s",
        summary["output"],
        summary["documents"],
        summary["tokens"],
        summary["shards"],
        summary["shards_reused"],
        summary["tokens_per_second"],
    )
    if summary["skipped"]:
        log.warning(
            "skipped bad documents: %s (e.g. %s)", summary["skipped"], "; ".join(summary["skipped_examples"][:3])
        )
    return summary


@register("task", "prepare_data", PrepareDataConfig)
class PrepareData(Task):
    """Tokenize raw files into a sharded token store (options under `task.*`)."""


    def run(self, ctx) -> dict:
        return prepare_data(self.config, ctx.parts.tokenizer)
