"""The compiled decode step (what runs under CUDA graphs on a GPU) traces whole and gives the
eager tokens; on the CPU it goes through inductor, so the GPU path's graph is checked here too."""

from __future__ import annotations

import shutil

import pytest

from internlm.inference import Engine, SamplingParams

from inference_helpers import random_model, uncached

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("g++") is None,
                                reason="torch.compile on the CPU needs a C compiler")


def test_compiled_decode_equals_the_uncached_forward(tokenizer):
    import torch

    model = random_model(seed=1, dtype=torch.float64)
    prompts = [[1, 50, 60], [1, 900, 5, 6, 7]]  # two slots: one compiled shape (batch bucket 2, length 128)
    params = SamplingParams(max_new_tokens=10, temperature=0)
    with Engine(model, tokenizer, model_id="random", max_batch=2, compile=True) as engine:
        got = engine.generate(prompts, params)
        assert engine.compiled  # it did not fall back to eager
    assert [c.token_ids for c in got] == [uncached(model, p, params) for p in prompts]
