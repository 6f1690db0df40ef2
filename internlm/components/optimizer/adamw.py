"""AdamW, InternLM's optimizer: decoupled weight decay on matrices, none on biases and norms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class AdamWConfig:
    lr: float = 1e-4  # peak learning rate (the scheduler scales it)
    betas: tuple[float, float] = (0.9, 0.95)  # Adam's moment decay rates
    eps: float = 1e-8  # added to the second-moment root
    weight_decay: float = 0.01  # decoupled decay, applied to weight matrices and embeddings only
    fused: bool | None = None  # fused CUDA kernel; null = on when the parameters are on a GPU

    def __post_init__(self):
        check_lr(self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(
                f"optimizer.betas={list(self.betas)}: each of the two must be in [0, 1)",
                where="optimizer.betas", fix="e.g. optimizer.betas=[0.9,0.95]",
            )
        if not self.eps > 0:
            raise ConfigError(f"optimizer.eps={self.eps} must be positive", where="optimizer.eps", fix="e.g. optimizer.eps=1e-8")
        if not self.weight_decay >= 0:
            raise ConfigError(
                f"optimizer.weight_decay={self.weight_decay} must be 0 or more", where="optimizer.weight_decay",
                fix="e.g. optimizer.weight_decay=0.01 (0 = none)",
            )


def check_lr(lr: float) -> None:
    if not (lr > 0 and lr < float("inf")):
        raise ConfigError(f"optimizer.lr={lr} must be a positive number", where="optimizer.lr", fix="e.g. optimizer.lr=3e-4")


@register("optimizer", "adamw", AdamWConfig)
class AdamW:
    """torch.optim.AdamW with no decay on 1-D parameters (biases, norm scales)."""

    def __init__(self, config: AdamWConfig):
        self.config = config

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for param in model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = self.config.fused
        if fused is None:
            fused = all(p.is_cuda for p in decay + no_decay)
        return torch.optim.AdamW(
            groups, lr=self.config.lr, betas=tuple(self.config.betas), eps=self.config.eps, fused=fused or None
        )
