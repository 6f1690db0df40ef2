"""What every data component promises the training program.

A data component (registered in group ``data``) turns its sources into `Batch`es. Its config
derives from `DataConfig`, whose fields compile reads to derive micro batches and accumulation.

Sampling is defined on a *global* sample stream, never per rank: optimizer step ``s`` consumes
global samples ``[s * G, (s + 1) * G)`` of a seeded permutation (G = global_batch_size), and
data-parallel rank ``r`` of ``d`` takes every d-th of them. A loader's state is therefore just how
many global samples were consumed, so a run resumes at the exact next sample, also with another
number of data-parallel ranks. `sampler.py` implements the rule (`GlobalLoader`) for every component.

Loaders made there also offer ``metrics() -> dict[str, float]`` (``data/epoch``, and for
mixtures ``data/mix/<source>``: the shares actually sampled), worth logging with the step metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from internlm.batch import Batch


@dataclass
class DataConfig:
    seq_len: int = 256  # tokens per packed row
    global_batch_size: int = 16  # rows per optimizer step, whatever the number of devices
    micro_batch_size: int | None = None  # rows per device per forward; null = as many as fit the global batch
    val_fraction: float = 0.0  # share of rows held out for validation (0 = no validation split)


class ResumableLoader(Protocol):
    """An endless iterator of micro batches for one data-parallel rank."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class DataSource(Protocol):
    def train_loader(self, *, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int) -> ResumableLoader: ...

    def val_batches(self, *, micro_batch_size: int, dp_rank: int, dp_size: int) -> list[Batch]: ...
