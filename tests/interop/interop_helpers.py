"""Tiny models with random (non-trivial) weights and a plain greedy loop, shared by the interop tests."""

from __future__ import annotations

import torch

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.norm import NormConfig
from internlm.components.model.rotary import RotaryConfig
from internlm.components.model.transformer import Transformer, TransformerConfig

CHAT_SYMBOLS = ["<|User|>", "<|Bot|>", "<eoh>", "<eoa>"]


def tiny_config(
    *, vocab_size: int = 4096, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int | None = 2,
    bias: bool = True, tie: bool = False, mlp_bias: bool = False,
) -> TransformerConfig:
    # Rope base and eps away from transformers' defaults, so a config that drops them shows in the logits.
    return TransformerConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_layers=num_layers,
        attention=AttentionConfig(
            num_heads=num_heads, num_kv_heads=num_kv_heads, qkv_bias=bias, out_bias=bias,
            rotary=RotaryConfig(base=5000.0, max_position=256),
        ),
        mlp=MLPConfig(intermediate_size=96, bias=mlp_bias),
        norm=NormConfig(eps=1e-5),
        tie_embeddings=tie,
    )


def random_model(config: TransformerConfig, seed: int = 0) -> Transformer:
    """Random weights everywhere: norms and biases too, so a misplaced one changes the output."""
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.normal_(std=0.1)
    return model


@torch.no_grad()
def greedy(logits_of, prompt: list[int], steps: int) -> list[int]:
    """Plain greedy decoding: recompute the whole sequence, take the argmax, repeat."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(logits_of(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]
