"""Rotary position embedding, rotate-half form, with per-document positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from internlm.registry import register


@dataclass
class RotaryConfig:
    base: float = 10000.0  # theta; larger bases stretch the wavelengths (long-context models)
    max_position: int = 2048  # longest sequence trained or served; compile checks seq_len against it


@register("model/rotary", "rope", RotaryConfig)
class RotaryEmbedding(nn.Module):
    """Rotates q and k by angles position * base^(-2i/d); positions come from the batch."""

    def __init__(self, config: RotaryConfig, head_dim: int):
        super().__init__()
        self.config, self.head_dim = config, head_dim
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=self.inv_freq.device)
        self.inv_freq.copy_(1.0 / (self.config.base ** (exponent / self.head_dim)))

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [B, S, 1, head_dim], computed in fp32 then cast."""
        angles = position_ids.float()[..., None] * self.inv_freq.float()
        angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, S, heads, head_dim]; the result keeps x's dtype (under autocast too)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
