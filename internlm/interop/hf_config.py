"""The Hugging Face Llama schema: our `TransformerConfig` <-> a `config.json`, and parameter names.

InternLM-7B is exactly a Llama with biases on q, k, v and o (``attention_bias=True``), so an export
is a plain ``LlamaForCausalLM`` that stock transformers, vLLM and LMDeploy load without remote code.
Our parameter names are Llama's without the ``model.`` prefix, so the name mapping is a prefix.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.norm import NormConfig
from internlm.components.model.rotary import RotaryConfig
from internlm.components.model.transformer import TransformerConfig
from internlm.errors import ConfigError

HF_PREFIX = "model."
HEAD = "lm_head.weight"
EMBEDDING = "embed_tokens.weight"
# Buffers some exports carry (older transformers saved them); recomputed from the config, never loaded.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)
# Within max_position_embeddings dynamic NTK scaling leaves RoPE unchanged; anything else changes it.
SUPPORTED_ROPE_TYPES = (None, "default", "origin", "dynamic")


def to_hf_name(name: str) -> str:
    return name if name == HEAD else HF_PREFIX + name


def from_hf_name(name: str) -> str:
    """Our name for a Llama-layout name; names of other layouts pass through for `load_into` to report."""
    if name == HEAD or not name.startswith(HF_PREFIX):
        return name
    return name[len(HF_PREFIX):]


def hf_config_dict(
    config: TransformerConfig,
    *,
    dtype: torch.dtype,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
) -> dict[str, Any]:
    """The ``config.json`` of a ``LlamaForCausalLM`` computing exactly what our model computes."""
    check_expressible(config)
    attention = config.attention
    rope_base = float(attention.rotary.base)
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.mlp.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": attention.num_heads,
        "num_key_value_heads": attention.num_kv_heads or attention.num_heads,
        "head_dim": config.hidden_size // attention.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": attention.rotary.max_position,
        "rms_norm_eps": config.norm.eps,
        "rope_theta": rope_base,  # read by transformers < 5, vLLM and LMDeploy
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_base},  # read by transformers >= 5
        "attention_bias": attention.qkv_bias,
        "attention_dropout": 0.0,
        "mlp_bias": config.mlp.bias,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "use_cache": True,
        "pretraining_tp": 1,
        "torch_dtype": dtype_name,  # transformers < 5
        "dtype": dtype_name,  # transformers >= 5
    }


def check_expressible(config: TransformerConfig) -> None:
    """Refuse a model `LlamaForCausalLM` cannot reproduce, before anything is written."""
    attention = config.attention
    if attention.qkv_bias != attention.out_bias:
        raise ConfigError(
            f"model.attention.qkv_bias={attention.qkv_bias} but out_bias={attention.out_bias}: "
            "a Hugging Face Llama has one switch (attention_bias) for the q, k, v and o biases",
            where="model.attention",
            fix="export only models with qkv_bias == out_bias (InternLM: both true; Llama: both false)",
        )
    if config.hidden_size % attention.num_heads:
        raise ConfigError(
            f"hidden_size {config.hidden_size} is not divisible by num_heads {attention.num_heads}",
            where="model.attention.num_heads",
            fix="choose num_heads dividing hidden_size",
        )


def transformer_config_from_hf(hf: Mapping[str, Any], where: str = "config.json") -> TransformerConfig:
    """Our config for a Llama-layout checkpoint (``model_type`` llama, or internlm = InternLM v1's HF
    format, whose modules are named like Llama's)."""
    model_type = hf.get("model_type")
    if model_type == "llama":
        qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
        rope_base, rope_type = _llama_rope(hf)
    elif model_type == "internlm":
        qkv_bias = out_bias = bool(hf.get("bias", True))
        mlp_bias = False
        rotary = hf.get("rotary") or {}
        rope_base, rope_type = float(rotary.get("base", 10000.0)), rotary.get("type")
    else:
        raise ConfigError(
            f"cannot import model_type {model_type!r}: only the Llama layout is supported (llama, internlm)",
            where=where,
            fix="convert the checkpoint to a LlamaForCausalLM first (InternLM2 fuses wqkv: use its convert2llama tool)",
        )
    if hf.get("quantization_config"):
        raise ConfigError(
            "the checkpoint is quantized; its weights are not plain tensors our model can load",
            where=where,
            fix="import the full-precision checkpoint",
        )
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"RoPE scaling {rope_type!r} is not implemented by our model",
            where=where,
            fix="import a checkpoint with default RoPE (rope_type 'default', no rope_scaling)",
        )
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"hidden_act {act!r} is not SwiGLU's silu", where=where, fix="import a SwiGLU (silu) model")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        raise ConfigError(
            f"head_dim {head_dim} x {heads} heads != hidden_size {hidden}: our attention uses hidden_size / num_heads",
            where=where,
            fix="import a model whose head_dim is hidden_size / num_attention_heads",
        )
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    return TransformerConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(hf["num_hidden_layers"]),
        attention=AttentionConfig(
            num_heads=heads,
            num_kv_heads=None if kv_heads == heads else kv_heads,
            qkv_bias=qkv_bias,
            out_bias=out_bias,
            rotary=RotaryConfig(base=rope_base, max_position=int(hf.get("max_position_embeddings", 2048))),
        ),
        mlp=MLPConfig(intermediate_size=int(hf["intermediate_size"]), bias=mlp_bias),
        norm=NormConfig(eps=float(hf.get("rms_norm_eps", 1e-6))),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _llama_rope(hf: Mapping[str, Any]) -> tuple[float, str | None]:
    """(base, type) from transformers >= 5's rope_parameters or the older rope_theta + rope_scaling."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    base = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return float(base), rope_type


# Fields that change what the network computes; with the key to set and how to compare.
_ARCHITECTURE_FIELDS = (
    ("vocab_size", lambda c: c.vocab_size),
    ("hidden_size", lambda c: c.hidden_size),
    ("num_layers", lambda c: c.num_layers),
    ("attention.num_heads", lambda c: c.attention.num_heads),
    ("attention.num_kv_heads", lambda c: c.attention.num_kv_heads or c.attention.num_heads),
    ("attention.qkv_bias", lambda c: c.attention.qkv_bias),
    ("attention.out_bias", lambda c: c.attention.out_bias),
    ("attention.rotary.base", lambda c: float(c.attention.rotary.base)),
    ("mlp.intermediate_size", lambda c: c.mlp.intermediate_size),
    ("mlp.bias", lambda c: c.mlp.bias),
    ("norm.eps", lambda c: float(c.norm.eps)),
    ("tie_embeddings", lambda c: c.tie_embeddings),
)


def architecture_differences(model: TransformerConfig, checkpoint: TransformerConfig) -> list[tuple[str, Any, Any]]:
    """(field, model value, checkpoint value) for every field that changes the computation."""
    diffs = []
    for key, get in _ARCHITECTURE_FIELDS:
        ours, theirs = get(model), get(checkpoint)
        same = math.isclose(ours, theirs, rel_tol=1e-6) if isinstance(ours, float) else ours == theirs
        if not same:
            diffs.append((key, ours, theirs))
    return diffs


def check_same_architecture(model: TransformerConfig, checkpoint: TransformerConfig, where: str) -> None:
    """Refuse weights made for another network (norm eps and RoPE base too, which shapes cannot show)."""
    refuse_differences(architecture_differences(model, checkpoint), where)


def refuse_differences(diffs: list, where: str, source: str = "") -> None:
    """One message for (model field, configured value, checkpoint value) triples, with the overrides
    that make the config match the checkpoint; nothing when there are none."""
    if diffs:
        listed = "; ".join(f"model.{key}: config {ours!r}, checkpoint {theirs!r}" for key, ours, theirs in diffs)
        overrides = " ".join(f"model.{key}={_override(theirs)}" for key, _, theirs in diffs)
        raise ConfigError(
            f"the checkpoint's model{f' ({source})' if source else ''} differs from the configured one: {listed}",
            where=where,
            fix=f"set the checkpoint's values: {overrides}",
        )


def _override(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)
