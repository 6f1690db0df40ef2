"""The global sample stream: determinism, exact resume, and resharding over data-parallel ranks."""

from __future__ import annotations

import numpy as np
import pytest

from internlm.components.data.packing import StreamRows
from internlm.components.data.sampler import GlobalLoader, ShuffledRows, rank_batches
from internlm.errors import ConfigError

SEQ = 4
NUM_ROWS = 37  # not a multiple of any batch size: batches straddle epochs


def numbered_rows() -> StreamRows:
    """Row k starts with token k * SEQ: a row's identity is its first input token / SEQ."""
    return StreamRows(np.arange(NUM_ROWS * SEQ + 1), np.array([0]), seq_len=SEQ)


def loader(seed=7, micro=2, rank=0, size=1) -> GlobalLoader:
    return GlobalLoader(ShuffledRows(numbered_rows(), seed), micro_batch_size=micro, dp_rank=rank, dp_size=size)


def row_ids(batch) -> list[int]:
    return (batch.input_ids[:, 0] // SEQ).tolist()


def run_step(loaders: list[GlobalLoader], accumulation: int) -> list[int]:
    """One optimizer step on simulated ranks: each rank draws `accumulation` micro batches."""
    seen = []
    for ld in loaders:
        for _ in range(accumulation):
            seen += row_ids(next(ld))
    return seen


def test_same_seed_same_batches_other_seed_other_order():
    a, b, c = loader(seed=1), loader(seed=1), loader(seed=2)
    first = [row_ids(next(a)) for _ in range(30)]
    assert first == [row_ids(next(b)) for _ in range(30)]
    assert first != [row_ids(next(c)) for _ in range(30)]


def test_each_epoch_visits_every_row_once():
    ld = loader(micro=1)
    epoch = [row_ids(next(ld))[0] for _ in range(NUM_ROWS)]
    assert sorted(epoch) == list(range(NUM_ROWS))
    second = [row_ids(next(ld))[0] for _ in range(NUM_ROWS)]
    assert sorted(second) == list(range(NUM_ROWS)) and second != epoch


def test_resume_mid_epoch_reproduces_the_next_batches():
    reference = loader()
    for _ in range(11):
        next(reference)
    state = reference.state_dict()
    expected = [row_ids(next(reference)) for _ in range(25)]
    restored = loader()
    restored.load_state_dict(state)
    assert [row_ids(next(restored)) for _ in range(25)] == expected


@pytest.mark.parametrize("new_size,new_micro", [(1, 4), (4, 1), (4, 2)])
def test_resharding_two_ranks_to_other_sizes(new_size, new_micro):
    global_batch = 8
    uninterrupted = loader(micro=4)
    reference = [run_step([uninterrupted], global_batch // 4) for _ in range(10)]

    ranks = [loader(micro=2, rank=r, size=2) for r in range(2)]
    seen = [run_step(ranks, global_batch // 4) for _ in range(4)]
    state = ranks[0].state_dict()
    assert all(r.state_dict() == state for r in ranks)  # ranks move in lockstep

    resumed = [loader(micro=new_micro, rank=r, size=new_size) for r in range(new_size)]
    for r in resumed:
        r.load_state_dict(state)
    seen += [run_step(resumed, global_batch // (new_micro * new_size)) for _ in range(6)]

    # Every step covers the same set of samples as the uninterrupted run: none repeated, none skipped.
    assert [sorted(s) for s in seen] == [sorted(s) for s in reference]
    flat = [x for s in seen for x in s]
    assert sorted(flat) == sorted(x for s in reference for x in s)


def test_ranks_read_disjoint_samples():
    ranks = [loader(micro=3, rank=r, size=3) for r in range(3)]
    batches = [row_ids(next(r)) for r in ranks]
    assert len(set(sum(batches, []))) == 9


def test_resume_with_another_stream_is_refused():
    state = loader(seed=1).state_dict()
    with pytest.raises(ConfigError, match="data stream"):
        loader(seed=2).load_state_dict(state)


def test_validation_split_over_ranks_evenly():
    rows = numbered_rows()
    per_rank = [rank_batches(rows, micro_batch_size=5, dp_rank=r, dp_size=3) for r in range(3)]
    counts = [sum(b.input_ids.shape[0] for b in batches) for batches in per_rank]
    assert counts == [12, 12, 12]  # 37 // 3; the remainder is left out so ranks stay in step
    ids = [x for batches in per_rank for b in batches for x in row_ids(b)]
    assert len(set(ids)) == 36
