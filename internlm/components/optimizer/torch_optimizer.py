"""Any optimizer class from torch.optim, named in the config (imports are allowlisted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from internlm.components.optimizer.adamw import check_lr
from internlm.registry import register, resolve_target


@dataclass
class TorchOptimizerConfig:
    target: str = "torch.optim.SGD"  # a class under torch.optim.
    lr: float = 1e-3  # peak learning rate (the scheduler scales it)
    kwargs: dict[str, Any] = field(default_factory=dict)  # other constructor arguments

    def __post_init__(self):
        check_lr(self.lr)


@register("optimizer", "torch", TorchOptimizerConfig)
class TorchOptimizer:
    """Escape hatch for experiments: `optimizer=torch optimizer.target=torch.optim.Adagrad`."""

    def __init__(self, config: TorchOptimizerConfig):
        self.config = config
        self.cls = resolve_target(config.target)  # compile builds this component: a bad target fails there

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.cls(model.parameters(), lr=self.config.lr, **self.config.kwargs)
