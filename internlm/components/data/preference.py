"""Preference pairs for DPO (`data=preference`): JSONL pairs rendered with the chat template,
packed two sequences per pair into rows with document masking.

A line holds either strings, ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` (the prompt
may also be a list of chat messages), or TRL's conversational form: ``chosen`` / ``rejected`` as
message lists, with an explicit ``prompt`` list or with the prompt as their shared first turns.
Only the final assistant answer (and its ``<eoa>``) is scored.

Each pair's chosen and rejected sequences (BOS + prompt + answer each) lie side by side in one
row as two documents (positions restart, attention never crosses them); whole pairs are packed
into rows of ``seq_len`` and the rest of a row is padding without loss. The batch says which pair
each token belongs to and which side (`Batch.sequence_pair`, `sequence_chosen`, `pair_keys`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from internlm.batch import IGNORE_INDEX, Batch
from internlm.components.data.base import DataConfig
from internlm.components.data.chat import encode_messages, iter_chats
from internlm.components.data.documents import BadDocument, DocumentPolicy, parse_record, resolve_files
from internlm.components.data.packing import packed_batch
from internlm.components.data.sampler import RowSetSource
from internlm.errors import ConfigError
from internlm.registry import register

log = logging.getLogger(__name__)


@dataclass
class PreferencePair:
    chosen_ids: np.ndarray  # int64, BOS + prompt + chosen reply
    chosen_mask: np.ndarray  # bool, True on the chosen reply's tokens
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)


def prompt_messages(record: dict) -> list:
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return prompt
    raise BadDocument("missing_prompt", "", 0, "field 'prompt' must be a string or a list of chat messages")


def answer_messages(record: dict, side: str) -> list:
    """The whole conversation of one side: prompt + answer, in either format."""
    value = record.get(side) if isinstance(record, dict) else None
    if isinstance(value, str):
        if not value.strip():
            raise BadDocument("empty_answer", "", 0, f"field {side!r} is empty")
        return prompt_messages(record) + [{"role": "assistant", "content": value}]
    messages = value if isinstance(value, list) else None
    if messages is None:
        raise BadDocument(
            "missing_answer", "", 0,
            f"field {side!r} is {'absent' if value is None else type(value).__name__}: "
            "give it the answer as a string, or as chat messages ending with the assistant's",
        )
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise BadDocument("bad_messages", "", 0, f"field {side!r} must end with an assistant message")
    if not str(messages[-1].get("content", "")).strip():
        raise BadDocument("empty_answer", "", 0, f"the answer in {side!r} is empty")
    return (prompt_messages(record) if "prompt" in record else []) + messages


def last_answer_only(mask: np.ndarray) -> np.ndarray:
    """Keep the last run of True (the final answer): earlier assistant turns are prompt."""
    out = np.zeros_like(mask)
    ends = np.nonzero(mask)[0]
    end = ends[-1]
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    out[start : end + 1] = True
    return out


def pair_parser(tokenizer, seq_len: int | None = None):
    def parse(raw: bytes) -> PreferencePair:
        record = parse_record(raw)
        sides = []
        for side in ("chosen", "rejected"):
            ids, mask = encode_messages(tokenizer, answer_messages(record, side))
            sides += [ids, last_answer_only(mask)]
        pair = PreferencePair(*sides)
        if np.array_equal(pair.chosen_ids, pair.rejected_ids):
            raise BadDocument("no_preference", "", 0, "chosen and rejected are the same")
        if seq_len is not None and len(pair) > seq_len:
            raise BadDocument(
                "pair_too_long", "", 0,
                f"chosen + rejected take {len(pair)} tokens, more than data.seq_len={seq_len} "
                f"(a pair shares one row): shorten it or raise data.seq_len to {len(pair)}",
            )
        return pair

    return parse


def read_preference_pairs(
    paths: list[str] | str, tokenizer, *, on_error: str = "fail", where: str = "data.paths", seq_len: int | None = None
) -> list[PreferencePair]:
    """Every (chosen, rejected) pair of these JSONL files, in file order."""
    policy = DocumentPolicy(on_error, where)
    files: list[Path] = resolve_files(paths, where)
    pairs = list(iter_chats(files, pair_parser(tokenizer, seq_len), policy))
    if policy.skipped:
        log.warning("skipped bad pairs in %s: %s (e.g. %s)", where, dict(policy.skipped), "; ".join(policy.examples))
    if not pairs:
        raise ConfigError(f"no preference pairs in {', '.join(map(str, files))}", where=where, fix="give the files pair records")
    return pairs


@dataclass
class PairRowsBatch:
    """Rows of packed pairs as numpy arrays (what `PairRows.get` returns)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    sequence_pair: np.ndarray  # row-local pair slot, -1 on padding
    sequence_chosen: np.ndarray
    row_pair_keys: list[np.ndarray]  # per row: dataset indices of its pairs, in slot order

    def to_batch(self) -> Batch:
        """Pair slots renumbered over the micro batch: 0..P-1, rows in order."""
        pair = self.sequence_pair.copy()
        offset = 0
        for row, keys in enumerate(self.row_pair_keys):
            pair[row][pair[row] >= 0] += offset
            offset += len(keys)
        keys = np.concatenate(self.row_pair_keys) if self.row_pair_keys else np.zeros(0, dtype=np.int64)
        return packed_batch(
            self.input_ids,
            self.labels,
            self.position_ids,
            sequence_pair=torch.from_numpy(pair),
            sequence_chosen=torch.from_numpy(self.sequence_chosen),
            pair_keys=torch.from_numpy(keys.astype(np.int64)),
        )


class PairRows:
    """A `RowSet` of whole pairs packed greedily, in order, into rows of `seq_len`."""

    def __init__(self, pairs: list[PreferencePair], seq_len: int, pad_id: int, first_key: int = 0):
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.pairs = pairs
        self.first_key = first_key  # dataset index of pairs[0] (held-out files continue the numbering)
        self.rows: list[list[int]] = []  # pair indices of each row
        used = seq_len
        for index, pair in enumerate(pairs):
            if used + len(pair) > seq_len:
                self.rows.append([])
                used = 0
            self.rows[-1].append(index)
            used += len(pair)

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, rows: np.ndarray) -> PairRowsBatch:
        n, seq = len(rows), self.seq_len
        ids = np.full((n, seq), self.pad_id, dtype=np.int64)
        labels = np.full((n, seq), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((n, seq), dtype=np.int64)
        pair_of = np.full((n, seq), -1, dtype=np.int64)
        chosen = np.zeros((n, seq), dtype=bool)
        keys = []
        for r, row in enumerate(np.asarray(rows, dtype=np.int64)):
            members = self.rows[int(row)]
            keys.append(np.asarray([self.first_key + i for i in members], dtype=np.int64))
            at = 0
            for slot, index in enumerate(members):
                pair = self.pairs[index]
                for seq_ids, mask, is_chosen in (
                    (pair.chosen_ids, pair.chosen_mask, True),
                    (pair.rejected_ids, pair.rejected_mask, False),
                ):
                    end = at + len(seq_ids)
                    ids[r, at:end] = seq_ids
                    # labels[t] = ids[t + 1] where token t + 1 is part of the scored answer
                    targets = np.where(mask[1:], seq_ids[1:], IGNORE_INDEX)
                    labels[r, at : end - 1] = targets
                    positions[r, at:end] = np.arange(len(seq_ids))
                    pair_of[r, at:end] = slot
                    chosen[r, at:end] = is_chosen
                    at = end
            positions[r, at:] = np.arange(seq - at)  # padding: one document of its own, no loss
        return PairRowsBatch(ids, labels, positions, pair_of, chosen, keys)

    def fingerprint(self) -> str:
        """A hash of every token and mask (keys the reference log-prob cache)."""
        digest = hashlib.sha256(f"{self.seq_len}:{self.first_key}".encode())
        for pair in self.pairs:
            for array in (pair.chosen_ids, pair.chosen_mask, pair.rejected_ids, pair.rejected_mask):
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


@dataclass
class PreferenceDataConfig(DataConfig):
    paths: list[str] = field(default_factory=list)  # preference JSONL files or globs (prompt/chosen/rejected per line)
    val_paths: list[str] = field(default_factory=list)  # held-out pair files for validation (instead of val_fraction)
    on_error: str = "fail"  # bad records: fail (file:line and reason) | skip (counted, reported)


@register("data", "preference", PreferenceDataConfig)
class PreferenceData(RowSetSource):
    """Preference pairs (strings or TRL's conversational form); chosen and rejected packed per row."""

    def __init__(self, config: PreferenceDataConfig, tokenizer):
        self.config = config
        if not config.paths:
            raise ConfigError("no preference files given", where="data.paths", fix="set data.paths=[<pairs.jsonl>]")
        self.check_one_holdout(bool(config.val_paths), config.val_fraction, "data.val_paths")
        pad = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
        read = lambda paths, where: read_preference_pairs(
            paths, tokenizer, on_error=config.on_error, where=where, seq_len=config.seq_len
        )
        pairs = read(config.paths, "data.paths")
        self.all_rows = [PairRows(pairs, config.seq_len, pad)]  # every row set, for the reference pass
        held_out = None
        if config.val_paths:
            held_out = PairRows(read(config.val_paths, "data.val_paths"), config.seq_len, pad, first_key=len(pairs))
            self.all_rows.append(held_out)
        self.use_rows(self.all_rows[0], held_out, config.val_fraction)

    @property
    def num_pairs(self) -> int:
        return sum(len(rows.pairs) for rows in self.all_rows)

    def fingerprint(self) -> str:
        return "-".join(rows.fingerprint() for rows in self.all_rows)
