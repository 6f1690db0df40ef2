"""Chat records (JSONL) rendered with InternLM's chat template into ids and a loss mask.

A line holds ``{"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}``;
`encode_chat` renders it (one BOS, ``<|User|>:...<eoh>``, ``<|Bot|>:...<eoa>``) and marks exactly
the assistant responses and their ``<eoa>`` as what the model must learn. Bad records get the
reasons of `documents.py` plus ``bad_messages`` (not a list of role/content dicts) and
``no_assistant`` (nothing to learn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from internlm.components.data.documents import BadDocument, DocumentPolicy, field_of, iter_jsonl, parse_record
from internlm.components.tokenizer.chat_template import encode_chat
from internlm.errors import ConfigError


def chat_parser(tokenizer, messages_field: str) -> Callable[[bytes], tuple[np.ndarray, np.ndarray]]:
    """Line -> (ids, mask) for `iter_jsonl`."""

    def parse(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
        return encode_messages(tokenizer, field_of(parse_record(raw), messages_field, list))

    return parse


def encode_messages(tokenizer, messages: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        ids, mask = encode_chat(tokenizer, messages)
    except ConfigError as err:
        raise BadDocument("bad_messages", "", 0, f"{err.where}: {err.what}") from None
    if not any(mask):
        raise BadDocument("no_assistant", "", 0, "no assistant turn to learn from")
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)


def iter_chats(files: list[Path], parse: Callable[[bytes], Any], policy: DocumentPolicy) -> Iterator[Any]:
    """Every accepted record of these JSONL files, in order."""
    for path in files:
        if path.stat().st_size == 0:
            raise ConfigError(f"data file {path} is empty", where=policy.where, fix="remove it or give it records")
        for _, _, item in iter_jsonl(path, parse):
            accepted = policy.accept(item)
            if accepted is not None:
                yield accepted
