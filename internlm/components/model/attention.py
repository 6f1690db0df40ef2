"""Multi-head (or grouped-query) self-attention with rotary embeddings over packed documents."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from internlm.components.model import attention_backends
from internlm.document_layout import DocumentLayout
from internlm.components.model.rotary import RotaryConfig, RotaryEmbedding, apply_rotary
from internlm.registry import register


@dataclass
class AttentionConfig:
    num_heads: int = 32  # query heads; hidden_size must be divisible by it
    num_kv_heads: int | None = None  # key/value heads for grouped-query attention; null = num_heads
    qkv_bias: bool = True  # InternLM: biases on q, k, v; Llama: none
    out_bias: bool = True  # InternLM: bias on o_proj
    backend: str = "auto"  # auto | eager | sdpa | ... (see attention_backends.py)
    rotary: RotaryConfig = field(default_factory=RotaryConfig)


@register("model/attention", "self_attention", AttentionConfig)
class SelfAttention(nn.Module):
    """q/k/v/o projections, RoPE on q and k, then a document-masked causal attention kernel."""

    def __init__(self, config: AttentionConfig, hidden_size: int):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads or config.num_heads
        self.head_dim = hidden_size // config.num_heads
        self.backend_name = config.backend
        self.q_proj = nn.Linear(hidden_size, self.num_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden_size, bias=config.out_bias)
        self.scale = attention_backends.default_scale(self.head_dim)
        self.rotary_kernel = None  # an alternative fn(q, k, cos, sin) -> (q, k), set by the kernels step

    def forward(self, x: torch.Tensor, layout: DocumentLayout, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        cos, sin = rope
        if self.rotary_kernel is not None:
            q, k = self.rotary_kernel(q, k, cos, sin)
        else:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        kernel = attention_backends.resolve(self.backend_name, x.device).fn
        out = kernel(q, k, v, layout, self.scale)
        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.head_dim))


def build_rotary(config: AttentionConfig, hidden_size: int) -> RotaryEmbedding:
    return RotaryEmbedding(config.rotary, hidden_size // config.num_heads)
