"""SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from internlm.registry import register


@dataclass
class MLPConfig:
    intermediate_size: int = 11008  # FFN width (InternLM-7B: 11008)
    bias: bool = False  # InternLM and Llama have no MLP biases


@register("model/mlp", "swiglu", MLPConfig)
class SwiGLU(nn.Module):
    """Gated MLP with SiLU, as in InternLM (w1 = gate, w2 = up, w3 = down in its checkpoints)."""

    def __init__(self, config: MLPConfig, hidden_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, config.intermediate_size, bias=config.bias)
        self.up_proj = nn.Linear(hidden_size, config.intermediate_size, bias=config.bias)
        self.down_proj = nn.Linear(config.intermediate_size, hidden_size, bias=config.bias)
        self.kernel = None  # an alternative silu(gate) * up, fn(gate, up), set by the kernels step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.down_proj(self.kernel(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
