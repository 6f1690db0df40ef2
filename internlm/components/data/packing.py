"""Packed rows: documents laid end to end in one token stream, cut into rows of ``seq_len``.

Row ``k`` reads the ``seq_len + 1`` tokens ``[k * seq_len, (k + 1) * seq_len]`` of the stream:
the first ``seq_len`` are the inputs, the last ``seq_len`` the targets (each row shares one token
with the next, so every token of the stream is a target exactly once).

The rules, the same for every data format:

* position ids restart at 0 at every document start, and at a row start (a document continued
  from the previous row starts afresh: it cannot attend to the row before);
* no target crosses a document boundary: a document's last token (its EOS for text) is not asked
  to predict the first token of the next, unrelated document (label ``IGNORE_INDEX``), as
  InternLM's packing does. EOS itself *is* a target, so the model learns to end a document;
* a token the source marks as "no loss" (an SFT prompt, InternLM's negative ids, padding) is
  never a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from internlm.batch import IGNORE_INDEX, Batch, cu_seqlens_from_positions
from internlm.errors import ConfigError


@dataclass
class Rows:
    """A micro batch as numpy arrays, [B, S] int64 each (see `Batch`)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray

    def to_batch(self) -> Batch:
        return packed_batch(self.input_ids, self.labels, self.position_ids)


def packed_batch(input_ids: np.ndarray, labels: np.ndarray, position_ids: np.ndarray, **extra: torch.Tensor) -> Batch:
    """A `Batch` of packed rows: the document boundaries (cu_seqlens) follow from where the
    positions restart. `extra`: further Batch fields (a preference batch's pair layout)."""
    positions = torch.from_numpy(position_ids)
    cu_seqlens, max_seqlen = cu_seqlens_from_positions(positions)
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        labels=torch.from_numpy(labels),
        position_ids=positions,
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
        **extra,
    )


class RowSet(Protocol):
    """A finite, randomly addressable set of packed rows."""

    seq_len: int

    def __len__(self) -> int: ...

    def get(self, rows: np.ndarray) -> Rows:
        """The rows with these indices, in this order (repeats allowed)."""
        ...


class StreamRows:
    """Rows cut from one token stream with a document index (see the module docstring).

    tokens:     1-D integer array (a memory map is fine: only the rows asked for are read).
    doc_starts: sorted offsets of each document's first token; doc_starts[0] == 0.
    targets:    optional 1-D bool array, False on tokens that must never be a target.
    """

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, targets: np.ndarray | None = None):
        if len(doc_starts) == 0 or doc_starts[0] != 0:
            raise ValueError("doc_starts must begin with 0")
        if targets is not None and len(targets) != len(tokens):
            raise ValueError("targets must have one flag per token")
        self.tokens = tokens
        self.doc_starts = np.asarray(doc_starts, dtype=np.int64)
        self.targets = targets
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def get(self, rows: np.ndarray) -> Rows:
        seq = self.seq_len
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range [0, {len(self)})")
        starts = rows * seq
        window = np.stack([np.asarray(self.tokens[s : s + seq + 1]) for s in starts]).astype(np.int64)
        offsets = starts[:, None] + np.arange(seq + 1)
        doc = np.searchsorted(self.doc_starts, offsets, side="right") - 1

        labels = window[:, 1:].copy()
        labels[doc[:, 1:] != doc[:, :-1]] = IGNORE_INDEX
        if self.targets is not None:
            allowed = np.stack([np.asarray(self.targets[s + 1 : s + seq + 1]) for s in starts])
            labels[~allowed] = IGNORE_INDEX
        first_of_doc_in_row = np.maximum(self.doc_starts[doc[:, :-1]], starts[:, None])
        positions = offsets[:, :-1] - first_of_doc_in_row
        return Rows(np.ascontiguousarray(window[:, :-1]), labels, positions)


class SubsetRows:
    """Some rows of another row set (a train or validation split)."""

    def __init__(self, base: RowSet, indices: np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seq_len = base.seq_len

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, rows: np.ndarray) -> Rows:
        return self.base.get(self.indices[np.asarray(rows, dtype=np.int64)])


class ConcatRows:
    """Row sets one after another (the shards of a token store)."""

    def __init__(self, parts: list[RowSet]):
        if not parts:
            raise ValueError("ConcatRows needs at least one part")
        self.parts = parts
        self.seq_len = parts[0].seq_len
        self.ends = np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def get(self, rows: np.ndarray) -> Rows:
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.ends, rows, side="right")
        return gather_rows(self.parts, part, rows - np.concatenate([[0], self.ends])[part], self.seq_len)


def gather_rows(parts: list[RowSet], which: np.ndarray, local: np.ndarray, seq_len: int) -> Rows:
    """Row i is ``parts[which[i]]``'s row ``local[i]``: one `get` per part, results put back in order."""
    out = Rows(*(np.empty((len(which), seq_len), dtype=np.int64) for _ in range(3)))
    for index in np.unique(which):
        sel = np.nonzero(which == index)[0]
        got = parts[int(index)].get(local[sel])
        out.input_ids[sel], out.labels[sel], out.position_ids[sel] = got.input_ids, got.labels, got.position_ids
    return out


def split_train_val(
    num_rows: int, val_fraction: float, where: str = "data.val_fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): a fixed-seed choice of ``round(val_fraction * rows)`` rows (at
    least one when the fraction is positive), spread over the whole corpus and the same for
    every run, whatever the training seed."""

    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}", where=where, fix="e.g. 0.05")
    num_val = 0 if val_fraction == 0 else max(1, round(val_fraction * num_rows))
    if num_val and num_rows - num_val < 1:
        raise ConfigError(
            f"{num_rows} packed rows cannot be split into training and validation (val_fraction={val_fraction})",
            where=where,
            fix="lower val_fraction or seq_len, or add data",
        )
    chosen = np.zeros(num_rows, dtype=bool)
    chosen[np.random.default_rng(0x5EED_DA7A).choice(num_rows, size=num_val, replace=False)] = True
    return np.nonzero(~chosen)[0], np.nonzero(chosen)[0]


def lay_out_samples(samples: list[np.ndarray], targets: list[np.ndarray], seq_len: int, pad_id: int):
    """Whole samples packed into rows of ``seq_len`` without splitting any (SFT).

    Samples go into the current row while they fit, else a new row starts; the rest of a row is
    padding (its own document, never a target). A sample longer than a row is cut to ``seq_len``.
    Returns ``(tokens, doc_starts, targets, truncated)`` for `StreamRows`: row k of the result is
    exactly stream tokens ``[k * seq_len, (k + 1) * seq_len)`` plus one trailing pad token.
    """
    tokens_out, targets_out, starts = [], [], []
    used, cursor, truncated = 0, 0, 0

    def put(tok: np.ndarray, tgt: np.ndarray) -> None:
        nonlocal used, cursor
        starts.append(cursor)
        tokens_out.append(tok)
        targets_out.append(tgt)
        used, cursor = used + len(tok), cursor + len(tok)

    def pad(n: int) -> None:
        put(np.full(n, pad_id, dtype=np.int64), np.zeros(n, dtype=bool))

    for tok, tgt in zip(samples, targets):
        if len(tok) == 0:
            continue
        if len(tok) > seq_len:
            tok, tgt, truncated = tok[:seq_len], tgt[:seq_len], truncated + 1
        if used + len(tok) > seq_len:
            if used < seq_len:
                pad(seq_len - used)
            used = 0
        put(np.asarray(tok, dtype=np.int64), np.asarray(tgt, dtype=bool))
        if used == seq_len:
            used = 0
    if used:
        pad(seq_len - used)
    pad(1)  # the one token past the last row that StreamRows reads (a separate document: no target)
    return np.concatenate(tokens_out), np.asarray(starts, dtype=np.int64), np.concatenate(targets_out), truncated
