"""Shared fixtures: small, fast configs of the real program."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep intra-op threads from fighting between the test process and its children.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# A run small enough for a unit test: the tiny model, short rows, no loggers, no sample.
FAST = [
    "data.seq_len=64",
    "data.global_batch_size=4",
    "trainer.log_every=1",
    "trainer.val_every=0",
    "trainer.loggers=[]",
    "trainer.sample_tokens=0",
    "trainer.progress_bar=false",
]


@pytest.fixture
def fast_overrides() -> list[str]:
    return list(FAST)
