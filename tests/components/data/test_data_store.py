"""The `store` component: trains on a prepared store; refuses another tokenizer's store."""

from __future__ import annotations

import numpy as np
import pytest
from datahelpers import random_documents, write_jsonl

from internlm import registry
from internlm.batch import IGNORE_INDEX
from internlm.components.data.store import StoreData, StoreDataConfig
from internlm.errors import ConfigError
from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("store")
    files = [write_jsonl(root / f"p{i}.jsonl", random_documents(200, seed=i)) for i in range(2)]
    prepare_data(
        PrepareDataConfig(
            input=[str(f) for f in files], output=str(root / "out"), workers=1, shard_mb=0.01, progress=False
        ),
        tokenizer,
    )
    return root / "out"


def make(tokenizer, **fields) -> StoreData:
    return registry.build(StoreDataConfig(**{"seq_len": 32, "global_batch_size": 4, **fields}), tokenizer)


def test_store_rows_come_from_the_shards(store, tokenizer):
    data = make(tokenizer, path=str(store), val_fraction=0.05)
    assert registry.get("data", "store").cls is StoreData
    total = len(data.train_rows) + len(data.val_rows)
    shards = [np.load(p) for p in sorted(store.glob("shard-*.tokens.npy"))]
    assert total == sum((len(t) - 1) // 32 for t in shards if len(t) > 32)
    batch = next(data.train_loader(micro_batch_size=4, dp_rank=0, dp_size=1, seed=3))
    assert batch.input_ids.shape == (4, 32)
    # every row is a window of some shard, and ends of documents (EOS -> next) carry no target
    for row, labels in zip(batch.input_ids.tolist(), batch.labels.tolist()):
        assert any(_contains(t, row) for t in shards)
        for t, (tok, lab) in enumerate(zip(row, labels)):
            if tok == tokenizer.eos_id:
                assert lab == IGNORE_INDEX


def _contains(haystack: np.ndarray, row: list[int]) -> bool:
    starts = np.nonzero(haystack[: len(haystack) - len(row) + 1] == row[0])[0]
    return any(haystack[s : s + len(row)].tolist() == row for s in starts)


def test_store_of_another_tokenizer_is_refused(store, other_tokenizer):
    with pytest.raises(ConfigError, match="another tokenizer") as err:
        make(other_tokenizer, path=str(store))
    assert "tokenizer.path" in err.value.fix


def test_missing_store_and_no_path(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="not a token store"):
        make(tokenizer, path=str(tmp_path))
    with pytest.raises(ConfigError, match="no token store given"):
        make(tokenizer)


def test_a_corrupted_byte_in_a_shard_is_named_when_its_rows_are_first_read_and_nothing_is_rewritten(store, tokenizer, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    shard = copy / "shard-00001.tokens.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    opened = make(tokenizer, path=str(copy))  # sizes still match: opening reads no shard
    rows = opened.train_rows
    with pytest.raises(ConfigError, match="shard-00001.tokens.npy is corrupt") as err:
        rows.get(np.arange(len(rows)))
    assert str(shard) in err.value.render() and "task.overwrite=true" in err.value.fix
    with pytest.raises(ConfigError, match="shard-00001.tokens.npy is corrupt"):
        make(tokenizer, path=str(copy), verify_checksums=True)  # every shard, up front
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    intact = make(tokenizer, path=str(store)).train_rows
    intact.get(np.arange(len(intact)))  # the undamaged store reads through


def test_a_truncated_shard_is_refused_when_the_store_is_opened(store, tokenizer, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    shard = copy / "shard-00000.docs.npy"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(ConfigError, match="shard 0 of .* is missing or truncated"):
        make(tokenizer, path=str(copy))


def test_the_model_learns_from_store_batches(store, tokenizer):
    """End to end: prepared store -> loader -> the project's Transformer; the loss falls."""
    import torch

    from internlm.components.model.attention import AttentionConfig
    from internlm.components.model.mlp import MLPConfig
    from internlm.components.model.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_layers=2,
            attention=AttentionConfig(num_heads=2),
            mlp=MLPConfig(intermediate_size=64),
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = make(tokenizer, path=str(store)).train_loader(micro_batch_size=8, dp_rank=0, dp_size=1, seed=0)
    losses = []
    for _ in range(40):
        batch = next(loader)
        loss = model(batch.input_ids, labels=batch.labels, **batch.model_inputs()) / batch.num_loss_tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
