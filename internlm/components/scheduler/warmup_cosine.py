"""Linear warmup, then cosine decay to a floor: InternLM's schedule (1% warmup, cosine to 1e-5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class WarmupCosineConfig:
    warmup_fraction: float = 0.01  # share of trainer.max_steps spent warming up linearly from 0
    warmup_steps: int | None = None  # overrides warmup_fraction when set
    min_lr: float = 1e-5  # learning rate reached at the last step

    def __post_init__(self):
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ConfigError(
                f"scheduler.warmup_fraction={self.warmup_fraction} must be between 0 and 1 (a share of trainer.max_steps)",
                where="scheduler.warmup_fraction", fix="e.g. scheduler.warmup_fraction=0.01, or a count: scheduler.warmup_steps=100",
            )
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={self.warmup_steps} must be 0 or more", where="scheduler.warmup_steps", fix="e.g. scheduler.warmup_steps=100")
        if not self.min_lr >= 0:
            raise ConfigError(f"scheduler.min_lr={self.min_lr} must be 0 or more", where="scheduler.min_lr", fix="e.g. scheduler.min_lr=1e-5")


@register("scheduler", "warmup_cosine", WarmupCosineConfig)
class WarmupCosine:
    """Learning-rate multiplier per step; compile resolves the warmup length into the plan."""

    def __init__(self, config: WarmupCosineConfig):
        self.config = config

    def warmup_steps(self, max_steps: int) -> int:
        if self.config.warmup_steps is not None:
            return self.config.warmup_steps
        return int(round(self.config.warmup_fraction * max_steps))

    def lr_at(self, step: int, peak_lr: float, max_steps: int) -> float:
        """Learning rate used for optimizer step `step` (0-based)."""
        warmup = self.warmup_steps(max_steps)
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, max_steps - warmup)
        floor = min(self.config.min_lr, peak_lr)
        return floor + 0.5 * (peak_lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))

    def build(self, optimizer: torch.optim.Optimizer, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        peak = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at(step, peak, max_steps) / peak)
