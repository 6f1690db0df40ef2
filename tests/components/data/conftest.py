"""Fixtures for the data tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `datahelpers`, also under pytest's importlib mode
from datahelpers import train_tokenizer  # noqa: E402

from internlm.components.tokenizer.sentencepiece import SentencePieceTokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> SentencePieceTokenizer:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "small.model", 400)


@pytest.fixture(scope="session")
def other_tokenizer(tmp_path_factory) -> SentencePieceTokenizer:
    return train_tokenizer(tmp_path_factory.mktemp("tok2") / "other.model", 390, seed=1)
