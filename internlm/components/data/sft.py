"""Supervised fine-tuning data: chat transcripts, loss on the assistant's tokens only.

Each conversation (`chat.py`) is one document. Whole conversations are packed into rows of
``seq_len`` without being split (`packing.lay_out_samples`): positions restart per conversation,
attention never crosses one, the rest of a row is padding without loss, and a conversation longer
than a row is cut to its first ``seq_len`` tokens (counted in ``truncated``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from internlm.components.data.base import DataConfig
from internlm.components.data.chat import chat_parser, iter_chats
from internlm.components.data.documents import DocumentPolicy, resolve_files
from internlm.components.data.packing import StreamRows, lay_out_samples
from internlm.components.data.sampler import RowSetSource
from internlm.errors import ConfigError
from internlm.registry import register

log = logging.getLogger(__name__)


@dataclass
class SFTDataConfig(DataConfig):
    paths: list[str] = field(
        default_factory=list
    )  # chat JSONL files or globs: {"messages": [{"role", "content"}, ...]} per line
    val_paths: list[str] = field(default_factory=list)  # held-out chat files for validation (instead of val_fraction)
    messages_field: str = "messages"  # JSONL key of the conversation
    on_error: str = "fail"  # bad records: fail (file:line and reason) | skip (counted, reported)


@register("data", "sft", SFTDataConfig)
class SFTData(RowSetSource):
    """Chat JSONL rendered with InternLM's template; loss on assistant tokens; whole chats per row."""

    def __init__(self, config: SFTDataConfig, tokenizer):
        self.config = config
        self.truncated = 0  # conversations longer than a row, cut to seq_len
        if not config.paths:
            raise ConfigError("no chat files given", where="data.paths", fix="set data.paths=[<chats.jsonl>]")
        self.check_one_holdout(bool(config.val_paths), config.val_fraction, "data.val_paths")
        rows = self._rows(resolve_files(config.paths, "data.paths"), tokenizer, "data.paths")
        held_out = None
        if config.val_paths:
            held_out = self._rows(resolve_files(config.val_paths, "data.val_paths"), tokenizer, "data.val_paths")
        self.use_rows(rows, held_out, config.val_fraction)

    def _rows(self, files: list[Path], tokenizer, where: str) -> StreamRows:
        policy = DocumentPolicy(self.config.on_error, where)
        chats = list(iter_chats(files, chat_parser(tokenizer, self.config.messages_field), policy))
        if policy.skipped:
            log.warning(
                "skipped bad chats in %s: %s (e.g. %s)", where, dict(policy.skipped), "; ".join(policy.examples)
            )
        if not chats:
            raise ConfigError(
                f"no conversations in {', '.join(map(str, files))}", where=where, fix="give the files chat records"
            )
        pad = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
        tokens, starts, targets, truncated = lay_out_samples(
            [ids for ids, _ in chats], [mask for _, mask in chats], self.config.seq_len, pad
        )
        if truncated:
            log.warning(
                "%d conversations in %s are longer than seq_len=%d and were cut", truncated, where, self.config.seq_len
            )
        self.truncated += truncated
        return StreamRows(tokens, starts, self.config.seq_len, targets=targets)
