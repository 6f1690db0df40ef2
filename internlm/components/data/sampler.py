"""The global sample stream and the per-rank loader that reads it (the rule in `base.py`).

A *stream* maps a global sample index ``g = 0, 1, 2, ...`` to a packed row, deterministically
for a seed. The loader of data-parallel rank ``r`` of ``d`` reads, for each micro batch of ``m``
rows, the global samples ``c + r + d * j`` (``j < m``), where ``c`` counts the global samples all
ranks consumed so far, then advances ``c`` by ``m * d``. Each optimizer step thus covers the
consecutive global samples ``[s * G, (s + 1) * G)`` split over the ranks, and the loader's whole
state is ``c``: a run restored with another number of ranks or another micro batch size picks up
at global sample ``c``, nothing repeated, nothing skipped.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from internlm.batch import Batch
from internlm.components.data.packing import RowSet, Rows, SubsetRows, split_train_val
from internlm.errors import ConfigError

SEED_MASK = (1 << 64) - 1  # numpy seeds are non-negative; any int seed works


class SampleStream(Protocol):
    """An endless, seeded sequence of packed rows addressed by global sample index."""

    seq_len: int

    def rows_at(self, global_indices: np.ndarray) -> Rows: ...

    def fingerprint(self) -> dict:
        """What must match for a checkpoint's position to mean the same samples."""
        ...

    def metrics(self, consumed: int) -> dict[str, float]:
        """Figures worth logging after ``consumed`` global samples (epoch, mixture shares)."""
        ...


class ShuffledRows:
    """Epoch after epoch over a row set, each epoch in its own seeded permutation."""

    def __init__(self, rows: RowSet, seed: int):
        if len(rows) == 0:
            raise ValueError("cannot sample from an empty row set")
        self.rows = rows
        self.seed = seed
        self.seq_len = rows.seq_len
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed & SEED_MASK, epoch])
            self._perms[epoch] = rng.permutation(len(self.rows))
        return self._perms[epoch]

    def row_indices(self, global_indices: np.ndarray) -> np.ndarray:
        """The row-set index of each global sample."""
        global_indices = np.asarray(global_indices, dtype=np.int64)
        epochs, local = np.divmod(global_indices, len(self.rows))
        out = np.empty_like(global_indices)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.permutation(int(epoch))[local[sel]]
        return out

    def rows_at(self, global_indices: np.ndarray) -> Rows:
        return self.rows.get(self.row_indices(global_indices))

    def fingerprint(self) -> dict:
        return {"rows": len(self.rows), "seq_len": self.seq_len, "seed": self.seed}

    def metrics(self, consumed: int) -> dict[str, float]:
        return {"data/epoch": consumed / len(self.rows)}


class GlobalLoader:
    """The `ResumableLoader` of one data-parallel rank over a `SampleStream`."""

    def __init__(self, stream: SampleStream, *, micro_batch_size: int, dp_rank: int, dp_size: int):
        if micro_batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad loader geometry: micro_batch_size={micro_batch_size}, rank {dp_rank} of {dp_size}")
        self.stream = stream
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed = 0  # global samples consumed by all ranks together

    def next_indices(self) -> np.ndarray:
        """The global samples of this rank's next micro batch (without consuming them)."""
        return self.consumed + self.dp_rank + self.dp_size * np.arange(self.micro_batch_size, dtype=np.int64)

    def __iter__(self) -> "GlobalLoader":
        return self

    def __next__(self) -> Batch:
        rows = self.stream.rows_at(self.next_indices())
        self.consumed += self.micro_batch_size * self.dp_size
        return rows.to_batch()

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "stream": self.stream.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        saved, current = state.get("stream"), self.stream.fingerprint()
        if saved is not None and saved != current:
            raise ConfigError(
                f"the checkpoint's data stream {saved} differs from this run's {current}",
                where="data",
                fix="resume with the data, seq_len and seed the checkpoint was trained with",
            )
        self.consumed = int(state["consumed"])

    def metrics(self) -> dict[str, float]:
        """Figures for the run log: epochs done and, for mixtures, the shares actually sampled."""
        return self.stream.metrics(self.consumed)


def rank_batches(rows: RowSet, *, micro_batch_size: int, dp_rank: int, dp_size: int) -> list[Batch]:
    """A fixed set (validation) split over ranks: rank r takes rows r, r + d, ...; every rank gets
    the same number of rows (the remainder of ``len(rows) / d`` is left out), in micro batches of
    ``micro_batch_size`` (the last one may be smaller)."""
    per_rank = len(rows) // dp_size
    mine = dp_rank + dp_size * np.arange(per_rank, dtype=np.int64)
    return [rows.get(mine[i : i + micro_batch_size]).to_batch() for i in range(0, per_rank, micro_batch_size)]


class RowSetSource:
    """The two `DataSource` methods for a component that ends as a training and a validation row set."""

    train_rows: RowSet
    val_rows: RowSet | None = None

    @staticmethod
    def check_one_holdout(held_out_given: bool, val_fraction: float, where: str) -> None:
        """Validation comes from held-out files or from a fraction of the rows, not both."""
        if held_out_given and val_fraction:
            raise ConfigError(
                f"both {where.removeprefix('data.')} and val_fraction are set",
                where=where,
                fix=f"hold out files ({where}) or a fraction of rows (data.val_fraction), not both",
            )

    def use_rows(self, rows: RowSet, held_out: RowSet | None, val_fraction: float) -> None:
        """Train on ``rows``; validate on ``held_out`` (held-out files) when given, else on a fixed
        ``val_fraction`` of ``rows`` taken out of training."""
        if held_out is not None:
            self.train_rows, self.val_rows = rows, held_out
            return
        train, val = split_train_val(len(rows), val_fraction)
        self.train_rows, self.val_rows = SubsetRows(rows, train), (SubsetRows(rows, val) if len(val) else None)

    def train_stream(self, seed: int) -> SampleStream:
        return ShuffledRows(self.train_rows, seed)

    def train_loader(self, *, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int) -> GlobalLoader:
        stream = self.train_stream(seed)
        return GlobalLoader(stream, micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size)

    def val_batches(self, *, micro_batch_size: int, dp_rank: int, dp_size: int) -> list[Batch]:
        if self.val_rows is None or len(self.val_rows) == 0:
            return []
        return rank_batches(self.val_rows, micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size)
