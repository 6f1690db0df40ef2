"""No adapter: every parameter of the model trains (the default)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from internlm.registry import register


@dataclass
class NoAdapterConfig:
    pass


@register("adapter", "none", NoAdapterConfig)
class NoAdapter:
    """Full-parameter training: the model is left as built."""

    def __init__(self, config: NoAdapterConfig | None = None):
        self.config = config or NoAdapterConfig()

    def apply(self, model: nn.Module) -> nn.Module:
        return model
