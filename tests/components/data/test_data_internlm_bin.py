"""InternLM's .bin/.bin.meta folders train without conversion, with the original's label rules."""

from __future__ import annotations

import numpy as np
import pytest
from datahelpers import write_bin

from internlm import registry
from internlm.batch import IGNORE_INDEX as X
from internlm.components.data.internlm_bin import InternLMBinConfig, InternLMBinData
from internlm.errors import ConfigError


class Vocab:
    vocab_size = 100
    identity = "test"


def make(root, **fields) -> InternLMBinData:
    return registry.build(
        InternLMBinConfig(**{"path": str(root), "seq_len": 4, "global_batch_size": 2, **fields}), Vocab()
    )


def test_rows_labels_and_positions_by_hand(tmp_path):
    # en/a.bin: [10 -11 -12 13] [20 21]; cn/b.bin: [30 31 -32 33 34 35]   (negative = no loss)
    write_bin(tmp_path / "en" / "a.bin", [[10, -11, -12, 13], [20, 21]])
    write_bin(tmp_path / "cn" / "b.bin", [[30, 31, -32, 33, 34, 35]], raw_meta=True)
    data = make(tmp_path)
    rows = data.train_rows
    assert len(rows) == 2  # 12 tokens: rows read [0, 5) and [4, 9)
    got = rows.get(np.array([0, 1]))
    assert got.input_ids.tolist() == [[30, 31, 32, 33], [34, 35, 10, 11]]  # cn sorts before en
    assert got.labels.tolist() == [[31, X, 33, 34], [35, X, X, X]]
    assert got.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert data.type_ids.tolist() == [1, 0, 0]  # cn, en, en


def test_a_folder_trains_through_the_loader(tmp_path):
    rng = np.random.default_rng(0)
    for kind in ("en", "cn", "code"):
        samples = [
            [int(t) * (1 if rng.random() < 0.8 else -1) for t in rng.integers(1, 100, rng.integers(2, 40))]
            for _ in range(30)
        ]
        write_bin(tmp_path / kind / "part.bin", samples)
    data = make(tmp_path, seq_len=32, val_fraction=0.1)
    loader = data.train_loader(micro_batch_size=2, dp_rank=0, dp_size=1, seed=0)
    for _ in range(20):
        batch = next(loader)
        assert batch.input_ids.shape == (2, 32) and int(batch.input_ids.min()) >= 1
        assert 0 < batch.num_loss_tokens < 64
    assert data.val_batches(micro_batch_size=2, dp_rank=0, dp_size=1)
    assert sorted(set(data.type_ids.tolist())) == [0, 1, 2]


def test_bad_folders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .bin files"):
        make(tmp_path / "empty")
    write_bin(tmp_path / "nometa" / "a.bin", [[1, 2, 3]])
    (tmp_path / "nometa" / "a.bin.meta").unlink()
    with pytest.raises(ConfigError, match="missing"):
        make(tmp_path / "nometa")
    write_bin(tmp_path / "vocab" / "a.bin", [[1, 2, 300, 4, 5, 6]])
    with pytest.raises(ConfigError, match="beyond the tokenizer"):
        make(tmp_path / "vocab")
    write_bin(tmp_path / "stale" / "a.bin", [[1, 2, 3, 4, 5, 6]])
    np.save(tmp_path / "stale" / "a.bin.meta.npy", np.array([[0, 5]], dtype=np.int32))
    (tmp_path / "stale" / "a.bin.meta.npy").rename(tmp_path / "stale" / "a.bin.meta")
    with pytest.raises(ConfigError, match="meta row says 5"):
        make(tmp_path / "stale")
