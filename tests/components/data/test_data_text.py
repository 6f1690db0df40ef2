"""The `text` component: files -> tokens -> packed rows, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from internlm import registry
from internlm.batch import IGNORE_INDEX
from internlm.components.data.text import TextData, TextDataConfig
from internlm.errors import ConfigError

from datahelpers import random_documents, write_jsonl


def make(tokenizer, **fields) -> TextData:
    config = TextDataConfig(**{"seq_len": 16, "global_batch_size": 4, **fields})
    return registry.build(config, tokenizer)


def test_registered_as_text():
    assert registry.get("data", "text").cls is TextData


def test_rows_match_a_hand_built_stream(tmp_path, tokenizer):
    docs = ["the king 春", "moon river", "love 花 月 night day"]
    path = write_jsonl(tmp_path / "a.jsonl", docs)
    data = make(tokenizer, paths=[str(path)], seq_len=5)
    stream, doc_of = [], []
    for i, doc in enumerate(docs):
        ids = [tokenizer.bos_id] + tokenizer.encode(doc) + [tokenizer.eos_id]
        stream += ids
        doc_of += [i] * len(ids)
    rows = data.train_rows
    assert len(rows) == (len(stream) - 1) // 5
    got = rows.get(np.arange(len(rows)))
    for k in range(len(rows)):
        window = slice(k * 5, k * 5 + 5)
        assert got.input_ids[k].tolist() == stream[window]
        for t in range(5):
            g = k * 5 + t
            same_doc = doc_of[g + 1] == doc_of[g]
            assert got.labels[k, t] == (stream[g + 1] if same_doc else IGNORE_INDEX)
            doc_start = doc_of.index(doc_of[g])
            assert got.position_ids[k, t] == g - max(doc_start, k * 5)


def test_txt_file_is_one_document_and_globs_work(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("the king love\nmoon river night", encoding="utf-8")
    (tmp_path / "b.txt").write_text("春 花 月 夜 山 水", encoding="utf-8")
    data = make(tokenizer, paths=[str(tmp_path / "*.txt")], seq_len=4)
    first = tokenizer.encode("the king love\nmoon river night")
    got = data.train_rows.get(np.array([0]))
    assert got.input_ids[0].tolist() == ([tokenizer.bos_id] + first)[:4]


def test_loader_batches_have_the_configured_shape(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", random_documents(60))
    data = make(tokenizer, paths=[str(path)], val_fraction=0.1)
    loader = data.train_loader(micro_batch_size=2, dp_rank=0, dp_size=1, seed=0)
    batch = next(loader)
    assert batch.input_ids.shape == (2, 16) and batch.labels.shape == (2, 16)
    assert int(batch.input_ids.max()) < tokenizer.vocab_size
    val = data.val_batches(micro_batch_size=2, dp_rank=0, dp_size=1)
    assert sum(b.input_ids.shape[0] for b in val) == len(data.val_rows) > 0
    # validation rows are never trained on
    train_rows = {tuple(r) for r in data.train_rows.get(np.arange(len(data.train_rows))).input_ids.tolist()}
    assert not any(tuple(r) in train_rows for b in val for r in b.input_ids.tolist())


def test_val_paths_hold_out_files(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", random_documents(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", random_documents(10, seed=2))
    data = make(tokenizer, paths=[str(train)], val_paths=[str(val)])
    assert len(data.val_rows) > 0
    with pytest.raises(ConfigError, match="both val_paths and val_fraction"):
        make(tokenizer, paths=[str(train)], val_paths=[str(val)], val_fraction=0.1)


def test_missing_path_is_a_config_error(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="not found") as err:
        make(tokenizer, paths=[str(tmp_path / "nope.jsonl")])
    assert err.value.where == "data.paths"
    with pytest.raises(ConfigError, match="no file matches"):
        make(tokenizer, paths=[str(tmp_path / "*.jsonl")])


def test_an_empty_file_alone_is_a_corpus_of_no_documents(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no documents .*'empty': 1"):
        make(tokenizer, paths=[str(tmp_path / "empty.jsonl")])


def test_corpus_too_small_for_one_row(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", ["the king"])
    with pytest.raises(ConfigError, match="fewer than one row") as err:
        make(tokenizer, paths=[str(path)], seq_len=512)
    assert "seq_len" in err.value.fix


def test_bad_line_fails_with_file_and_line_or_is_skipped(tmp_path, tokenizer):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": d}) for d in random_documents(20)]
    lines[3] = '{"text": "unterminated'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"a\.jsonl:4: malformed_json"):
        make(tokenizer, paths=[str(path)])
    assert len(make(tokenizer, paths=[str(path)], on_error="skip").train_rows) > 0


def test_bundled_corpus_and_tokenizer_are_the_default():
    from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer

    bundled = SentencePieceTokenizer(SentencePieceConfig())
    data = make(bundled, seq_len=128, val_fraction=0.05)
    assert len(data.train_rows) > 1000 and len(data.val_rows) > 50
    batch = next(data.train_loader(micro_batch_size=4, dp_rank=0, dp_size=1, seed=0))
    assert batch.input_ids.shape == (4, 128)
    assert int(batch.input_ids.max()) < bundled.vocab_size
    assert batch.num_loss_tokens > 4 * 120  # only document ends are left out
