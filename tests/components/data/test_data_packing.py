"""Packing rules against hand-built examples."""

from __future__ import annotations

import numpy as np
import torch

from internlm.batch import IGNORE_INDEX as X
from internlm.components.data.packing import ConcatRows, StreamRows, SubsetRows, lay_out_samples, split_train_val

# Three documents (2 = EOS): A = 10 11 12 2 | B = 20 21 2 | C = 30 31 32 33 34 2
STREAM = np.array([10, 11, 12, 2, 20, 21, 2, 30, 31, 32, 33, 34, 2], dtype=np.uint16)
STARTS = np.array([0, 4, 7])


def test_stream_rows_by_hand():
    rows = StreamRows(STREAM, STARTS, seq_len=4)
    assert len(rows) == 3  # (13 - 1) // 4: each row reads 5 tokens, neighbours share one
    got = rows.get(np.array([0, 1, 2]))
    assert got.input_ids.tolist() == [[10, 11, 12, 2], [20, 21, 2, 30], [31, 32, 33, 34]]
    # EOS is a target; the token after EOS (next document's first) is not predicted from it.
    assert got.labels.tolist() == [[11, 12, 2, X], [21, 2, X, 31], [32, 33, 34, 2]]
    # Positions restart per document, and at a row start for a continued document (row 2).
    assert got.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]]


def test_rows_in_any_order_and_repeated():
    rows = StreamRows(STREAM, STARTS, seq_len=4)
    got = rows.get(np.array([2, 0, 2]))
    assert got.input_ids.tolist() == [[31, 32, 33, 34], [10, 11, 12, 2], [31, 32, 33, 34]]


def test_targets_mask_hides_tokens_as_targets_only():
    targets = np.ones(len(STREAM), dtype=bool)
    targets[[1, 8]] = False  # token 11 and token 31 are "no loss"
    got = StreamRows(STREAM, STARTS, seq_len=4, targets=targets).get(np.array([0, 1]))
    assert got.input_ids.tolist() == [[10, 11, 12, 2], [20, 21, 2, 30]]
    assert got.labels.tolist() == [[X, 12, 2, X], [21, 2, X, X]]


def test_batch_conversion_gives_cu_seqlens_per_document():
    batch = StreamRows(STREAM, STARTS, seq_len=4).get(np.array([1, 2])).to_batch()
    assert batch.input_ids.dtype == torch.int64 and batch.labels.dtype == torch.int64
    # flattened: row 1 = docs of 3 and 1 tokens, row 2 = one doc of 4
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 8]
    assert batch.max_seqlen == 4


def test_subset_and_concat_address_the_right_rows():
    a = StreamRows(np.arange(9), np.array([0]), seq_len=2)  # rows start 0, 2, 4, 6
    b = StreamRows(np.arange(100, 107), np.array([0]), seq_len=2)  # rows start 100, 102, 104
    both = ConcatRows([a, b])
    assert len(both) == 7
    assert both.get(np.array([6, 0, 4])).input_ids[:, 0].tolist() == [104, 0, 100]
    assert SubsetRows(both, np.array([5, 1])).get(np.array([1, 0])).input_ids[:, 0].tolist() == [2, 102]


def test_split_is_disjoint_complete_and_seed_free():
    train, val = split_train_val(100, 0.1)
    assert len(val) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert np.array_equal(split_train_val(100, 0.1)[1], val)
    assert len(split_train_val(5, 0.01)[1]) == 1  # a positive fraction holds out at least one row
    assert len(split_train_val(5, 0.0)[1]) == 0


def test_whole_samples_packed_without_splitting():
    samples = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9, 10, 11]), np.array([12])]
    targets = [np.array([0, 1, 1], bool), np.array([1, 1], bool), np.ones(6, bool), np.array([1], bool)]
    tokens, starts, tgt, truncated = lay_out_samples(samples, targets, seq_len=5, pad_id=0)
    assert truncated == 1  # the 6-token sample is cut to 5
    rows = StreamRows(tokens, starts, 5, tgt)
    assert len(rows) == 3
    got = rows.get(np.arange(3))
    assert got.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [12, 0, 0, 0, 0]]
    assert got.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert got.labels.tolist() == [[2, 3, X, 5, X], [7, 8, 9, 10, X], [X, X, X, X, X]]
