"""A run trained with LoRA loads for inference with its adapters folded in: internlm.load and the
engine give the logits of the adapted model, not of the base."""

from __future__ import annotations

import torch

import internlm
from internlm.api import run
from internlm.inference import load_engine
from internlm.runtime.checkpoint import find_checkpoint
from internlm.runtime.saved_run import load_model_state


def test_a_lora_run_loads_with_its_adapters_merged(tmp_path, fast_overrides):
    run(fast_overrides + ["adapter=lora", "adapter.rank=4", "trainer.max_steps=3", "optimizer.lr=1e-2"], tmp_path)
    saved = load_model_state(find_checkpoint("auto", tmp_path))
    a, b = saved["layers.0.self_attn.q_proj.lora_A.weight"], saved["layers.0.self_attn.q_proj.lora_B.weight"]
    assert b.abs().sum() > 0  # the adapters trained
    model, _ = internlm.load(tmp_path)
    expected = saved["layers.0.self_attn.q_proj.weight"] + (b @ a) * (32.0 / 4)  # alpha 32 / rank 4
    torch.testing.assert_close(model.layers["0"].self_attn.q_proj.weight, expected)
    engine = load_engine(str(tmp_path), device="cpu")
    try:
        ids = engine.tokenizer.encode("To be", bos=True)
        with torch.no_grad():
            torch.testing.assert_close(engine.model(torch.tensor([ids])), model(torch.tensor([ids])))
    finally:
        engine.close()
