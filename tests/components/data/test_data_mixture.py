"""Mixtures: exact proportions, determinism, resume, and mixed source formats."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datahelpers import random_documents, write_bin, write_jsonl

from internlm import registry
from internlm.components.data.mixture import MixtureDataConfig, MixtureSourceConfig, block_counts
from internlm.errors import ConfigError
from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data

RANGES = {"web": (1, 30), "books": (30, 60), "code": (60, 90)}  # each source's token ids, to tell rows apart


class Vocab:
    vocab_size = 100
    identity = "test"


def bin_sources(root, weights):
    rng = np.random.default_rng(0)
    sources = {}
    for name, (low, high) in RANGES.items():
        samples = [rng.integers(low, high, rng.integers(5, 50)).tolist() for _ in range(40 + 20 * len(name))]
        write_bin(root / name / "en" / "data.bin", samples)
        sources[name] = MixtureSourceConfig(path=str(root / name), weight=weights[name])
    return sources


def source_of(row) -> str:
    return next(n for n, (low, high) in RANGES.items() if low <= int(row[0]) < high)


def make(sources, tokenizer=None, **fields):
    config = MixtureDataConfig(sources=sources, **{"seq_len": 8, "global_batch_size": 50, **fields})
    return registry.build(config, tokenizer or Vocab())


def test_proportions_within_one_percent_over_10k_samples(tmp_path):
    data = make(bin_sources(tmp_path, {"web": 0.6, "books": 0.3, "code": 0.1}))
    loader = data.train_loader(micro_batch_size=50, dp_rank=0, dp_size=1, seed=5)
    counts = Counter(source_of(row) for _ in range(200) for row in next(loader).input_ids)
    assert sum(counts.values()) == 10_000
    for name, weight in {"web": 0.6, "books": 0.3, "code": 0.1}.items():
        assert abs(counts[name] / 10_000 - weight) < 0.01
    # what the run log reports is what was drawn
    reported = data.sampled_proportions()
    assert reported == pytest.approx({n: c / 10_000 for n, c in counts.items()})
    assert loader.metrics()["data/mix/web"] == pytest.approx(reported["web"])


def test_same_seed_same_rows_and_exact_resume(tmp_path):
    sources = bin_sources(tmp_path, {"web": 2.0, "books": 1.0, "code": 1.0})
    a = make(sources).train_loader(micro_batch_size=4, dp_rank=0, dp_size=1, seed=1)
    b = make(sources).train_loader(micro_batch_size=4, dp_rank=0, dp_size=1, seed=1)
    first = [next(a).input_ids.tolist() for _ in range(30)]
    assert first == [next(b).input_ids.tolist() for _ in range(30)]
    state = a.state_dict()
    expected = [next(a).input_ids.tolist() for _ in range(10)]
    resumed = [make(sources).train_loader(micro_batch_size=2, dp_rank=r, dp_size=2, seed=1) for r in range(2)]
    for loader in resumed:
        loader.load_state_dict(state)
    got = [next(r).input_ids.tolist() for _ in range(10) for r in resumed]
    regroup = [sorted(got[2 * i] + got[2 * i + 1]) for i in range(10)]
    assert regroup == [sorted(batch) for batch in expected]


def test_block_counts_are_exact_and_keep_small_sources():
    assert block_counts(np.array([0.6, 0.3, 0.1])).tolist() == [600, 300, 100]
    counts = block_counts(np.array([0.9995, 0.0005]))
    assert counts[1] >= 10 and counts[1] / counts.sum() == pytest.approx(0.0005)


def test_sources_of_every_format_mix(tmp_path, tokenizer):
    text = write_jsonl(tmp_path / "t.jsonl", random_documents(80, seed=1))
    store = tmp_path / "store"
    prepare_data(
        PrepareDataConfig(
            input=[str(write_jsonl(tmp_path / "s.jsonl", random_documents(80, seed=2)))],
            output=str(store),
            workers=1,
            progress=False,
        ),
        tokenizer,
    )
    write_bin(tmp_path / "bin" / "cn" / "a.bin", [list(range(3, 60))] * 20)
    sources = {
        "text": MixtureSourceConfig(path=str(text), weight=1),
        "store": MixtureSourceConfig(path=str(store), weight=1),
        "bin": MixtureSourceConfig(path=str(tmp_path / "bin"), weight=1),
    }
    data = make(sources, tokenizer, val_fraction=0.1)
    assert [type(p).__name__ for p in data.parts.values()] == ["TextData", "StoreData", "InternLMBinData"]
    batch = next(data.train_loader(micro_batch_size=6, dp_rank=0, dp_size=1, seed=0))
    assert batch.input_ids.shape == (6, 8)
    assert data.val_batches(micro_batch_size=4, dp_rank=0, dp_size=1)


def test_bad_mixtures_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs sources"):
        make({})
    with pytest.raises(ConfigError, match="not positive"):
        make({"a": MixtureSourceConfig(path=str(tmp_path), weight=0)})
    with pytest.raises(ConfigError) as err:
        make({"web": MixtureSourceConfig(path=str(tmp_path / "missing.jsonl"))})
    assert err.value.where.startswith("data.sources.web")
