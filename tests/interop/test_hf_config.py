"""Our TransformerConfig <-> a Hugging Face Llama config.json, and the architecture comparison."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig

from interop_helpers import tiny_config
from internlm.components.model.transformer import TransformerConfig
from internlm.errors import ConfigError
from internlm.interop import check_same_architecture, hf_config_dict, transformer_config_from_hf


@pytest.mark.parametrize(
    "config",
    [TransformerConfig(), tiny_config(), tiny_config(tie=True, bias=False, mlp_bias=True)],
    ids=["internlm-7b", "tiny-gqa", "tied-mlp-bias"],
)
def test_config_json_round_trips_and_transformers_reads_the_same_values(config):
    hf = hf_config_dict(config, dtype=torch.bfloat16)
    back = transformer_config_from_hf(hf)
    assert dataclasses.asdict(back) == dataclasses.asdict(config)

    llama = LlamaConfig.from_dict(hf)  # what stock transformers makes of the file
    kv_heads = config.attention.num_kv_heads or config.attention.num_heads
    assert (llama.num_attention_heads, llama.num_key_value_heads, llama.head_dim) == (
        config.attention.num_heads, kv_heads, config.hidden_size // config.attention.num_heads)
    assert llama.rope_parameters["rope_theta"] == config.attention.rotary.base
    assert llama.rope_parameters["rope_type"] == "default"
    assert llama.rms_norm_eps == config.norm.eps and llama.attention_bias == config.attention.qkv_bias
    assert llama.mlp_bias == config.mlp.bias and llama.tie_word_embeddings == config.tie_embeddings


def test_older_configs_with_top_level_rope_theta_are_read():
    hf = hf_config_dict(tiny_config(), dtype=torch.float32)
    del hf["rope_parameters"]
    hf["rope_theta"] = 123.0
    assert transformer_config_from_hf(hf).attention.rotary.base == 123.0


def test_architecture_comparison_names_each_difference_and_the_override():
    model = tiny_config()
    checkpoint = tiny_config(num_kv_heads=4, tie=True)
    checkpoint.norm.eps = 1e-6
    checkpoint.attention.rotary.base = 10000.0
    with pytest.raises(ConfigError) as caught:
        check_same_architecture(model, checkpoint, where="model.init_from")
    message = str(caught.value)
    for part in ("model.attention.num_kv_heads: config 2, checkpoint 4",
                 "model.norm.eps: config 1e-05, checkpoint 1e-06",
                 "model.attention.rotary.base: config 5000.0, checkpoint 10000.0", "model.tie_embeddings=true"):
        assert part in message


def test_float32_rounding_of_eps_is_not_a_difference():
    checkpoint = tiny_config()
    checkpoint.norm.eps = 9.999999747378752e-06  # 1e-5 stored as float32, as GGUF files do
    check_same_architecture(tiny_config(), checkpoint, where="model.init_from")
