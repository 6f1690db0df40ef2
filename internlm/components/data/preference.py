"""Preference pairs for DPO: (prompt, chosen, rejected) rendered with the chat template.

A line holds ``{"prompt": ..., "chosen": ..., "rejected": ...}``. The prompt is a user message
(a string) or a list of chat messages; each answer is the assistant's reply (a string). Both
completions share the prompt's tokens, and each mask is True exactly on the reply and its
``<eoa>`` (what DPO scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internlm.components.data.chat import encode_messages, iter_chats
from internlm.components.data.documents import BadDocument, DocumentPolicy, field_of, parse_record, resolve_files


@dataclass
class PreferencePair:
    chosen_ids: np.ndarray  # int64, BOS + prompt + chosen reply
    chosen_mask: np.ndarray  # bool, True on the chosen reply's tokens
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray


def prompt_messages(record: dict) -> list:
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return prompt
    raise BadDocument("missing_field", "", 0, "field 'prompt' must be a string or a list of chat messages")


def pair_parser(tokenizer):
    def parse(raw: bytes) -> PreferencePair:
        record = parse_record(raw)
        prompt = prompt_messages(record)
        chosen, rejected = field_of(record, "chosen", str), field_of(record, "rejected", str)
        if chosen == rejected:
            raise BadDocument("no_preference", "", 0, "chosen and rejected are the same")
        ids_c, mask_c = encode_messages(tokenizer, prompt + [{"role": "assistant", "content": chosen}])
        ids_r, mask_r = encode_messages(tokenizer, prompt + [{"role": "assistant", "content": rejected}])
        return PreferencePair(ids_c, mask_c, ids_r, mask_r)

    return parse


def read_preference_pairs(
    paths: list[str] | str, tokenizer, *, on_error: str = "fail", where: str = "data.paths"
) -> list[PreferencePair]:
    """Every (chosen, rejected) pair of these JSONL files, in file order."""
    policy = DocumentPolicy(on_error, where)
    files: list[Path] = resolve_files(paths, where)
    return list(iter_chats(files, pair_parser(tokenizer), policy))
