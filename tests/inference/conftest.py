"""Fixtures of the inference tests: one tiny trained run (trained once per session), its HF export,
and small random models in float64 (so cached and uncached math agree to the last token)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from tests.conftest import FAST

from inference_helpers import random_model


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    from internlm.api import run

    folder = tmp_path_factory.mktemp("inference") / "tiny-run"
    run(FAST + ["trainer.max_steps=4"], folder)
    return folder


@pytest.fixture(scope="session")
def hf_export(trained_run, tmp_path_factory) -> Path:
    from internlm.api import run

    out = tmp_path_factory.mktemp("inference-export") / "tiny-hf"
    run(["task=export_hf", f"checkpoint={trained_run}", f"task.dir={out}", "task.dtype=float32"],
        tmp_path_factory.mktemp("export-run"))
    return out


@pytest.fixture(scope="session")
def tokenizer() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(SentencePieceConfig())


@pytest.fixture(scope="session")
def model64() -> torch.nn.Module:
    return random_model(seed=0, dtype=torch.float64)
