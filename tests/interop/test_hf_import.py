"""Import of Hugging Face checkpoints: every layout, exact round trips, and the fit report."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from interop_helpers import random_model, tiny_config
from internlm.components.model.transformer import Transformer
from internlm.errors import ConfigError
from internlm.interop import export_hf, load_hf_checkpoint, load_into


def stock_llama(tie: bool = False, bias: bool = True) -> LlamaForCausalLM:
    """A randomly initialised model built by transformers itself (not by our export)."""
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, attention_bias=bias,
        tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(0.05 * torch.randn_like(param))  # norms away from 1, biases away from 0
    return model


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_hf_to_ours_to_hf_reproduces_every_tensor_exactly(tmp_path, tie):
    original = stock_llama(tie=tie)
    original.save_pretrained(tmp_path / "orig")
    config, state = load_hf_checkpoint(tmp_path / "orig")
    ours = Transformer(config).eval()
    load_into(ours, state)

    ids = torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - original(ids).logits).abs().max() <= 1e-5

    export_hf(ours.state_dict(), config, tmp_path / "again", dtype="float32")
    before = load_file(tmp_path / "orig" / "model.safetensors")
    after = load_file(tmp_path / "again" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    old, new = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("orig", "again"))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "attention_bias", "tie_word_embeddings", "rope_parameters"):
        assert old[key] == new[key], key


def test_pytorch_bin_checkpoints_whole_and_sharded(tmp_path):
    original = stock_llama()
    hf_state = original.state_dict()
    # A whole pytorch_model.bin, with the rotary buffers old transformers versions saved.
    whole = tmp_path / "whole"
    whole.mkdir()
    original.config.to_json_file(whole / "config.json")
    extra = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(4) for i in range(3)}
    torch.save({**hf_state, **extra}, whole / "pytorch_model.bin")
    # The same split in two .bin shards with an index.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    original.config.to_json_file(sharded / "config.json")
    names = list(hf_state)
    halves = {"a.bin": names[: len(names) // 2], "b.bin": names[len(names) // 2:]}
    for file, keys in halves.items():
        torch.save({k: hf_state[k] for k in keys}, sharded / file)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    for folder in (whole, sharded):
        _, state = load_hf_checkpoint(folder)
        assert set(state) == {k.removeprefix("model.") for k in hf_state}
        for k, v in hf_state.items():
            assert torch.equal(state[k.removeprefix("model.")], v)


class Payload:
    """Stands for an arbitrary object a malicious .bin could make torch.load build."""


def test_bin_files_are_never_unpickled_beyond_tensors(tmp_path):
    original = stock_llama()
    original.config.to_json_file(tmp_path / "config.json")
    torch.save({"model.norm.weight": torch.ones(48), "payload": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="weights_only"):
        load_hf_checkpoint(tmp_path)


def test_internlm_v1_hf_config_maps_to_biased_attention():
    from internlm.interop import transformer_config_from_hf

    internlm_7b = {  # the fields of internlm/internlm-7b's config.json
        "architectures": ["InternLMForCausalLM"], "model_type": "internlm", "bias": True, "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 2048,
        "num_attention_heads": 32, "num_hidden_layers": 32, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
        "vocab_size": 103168,
    }
    config = transformer_config_from_hf(internlm_7b)
    assert config.attention.qkv_bias and config.attention.out_bias and config.attention.num_kv_heads is None
    shape = (config.vocab_size, config.hidden_size, config.num_layers, config.mlp.intermediate_size)
    assert shape == (103168, 4096, 32, 11008)
    assert config.norm.eps == 1e-6 and config.attention.rotary.base == 10000.0 and not config.tie_embeddings
    with torch.device("meta"):
        assert Transformer(config).num_parameters() == 7_321_948_160  # InternLM-7B's published count


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "internlm2"}, "only the Llama layout"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_parameters": None}, "RoPE scaling 'linear'"),
        ({"hidden_act": "gelu"}, "not SwiGLU"),
        ({"head_dim": 16}, "head_dim 16"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantized"),
    ],
)
def test_configs_our_model_cannot_compute_are_refused(change, message):
    from internlm.interop import transformer_config_from_hf

    hf = {**stock_llama().config.to_dict(), **change}
    with pytest.raises(ConfigError, match=message):
        transformer_config_from_hf(hf)


def test_load_into_reports_every_misfit_with_shapes(tmp_path):
    config = tiny_config(num_layers=2)
    state = dict(random_model(config).state_dict())
    state.pop("layers.1.self_attn.q_proj.bias")
    state["layers.0.mlp.gate_proj.weight"] = torch.zeros(5, 64)
    state["layers.7.mlp.up_proj.weight"] = torch.zeros(96, 64)
    with pytest.raises(ConfigError) as caught:
        load_into(Transformer(config), state)
    message = str(caught.value)
    assert "1 missing from the checkpoint: layers.1.self_attn.q_proj.bias" in message
    assert "1 in the checkpoint but not in the model: layers.7.mlp.up_proj.weight" in message
    assert "layers.0.mlp.gate_proj.weight (model [96, 64], checkpoint [5, 64])" in message
    assert "model.attention.qkv_bias" in message and "model.num_layers" in message


def test_load_into_copies_and_reports(tmp_path):
    config = tiny_config(tie=True)
    source = random_model(config, seed=1)
    target = random_model(config, seed=2)
    report = load_into(target, {k: v.double() for k, v in source.state_dict().items()})
    assert report.tensors == len(source.state_dict()) - 1  # the tied head counts once
    assert report.parameters == source.num_parameters() and report.source_dtypes == ("float64",)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    assert target.lm_head.weight is target.embed_tokens.weight


def test_a_tied_model_refuses_a_separate_head():
    config = tiny_config(tie=True)
    state = dict(random_model(config).state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(ConfigError, match="tie_embeddings=false"):
        load_into(Transformer(config), state)
