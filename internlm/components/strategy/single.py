"""One process on one device (CPU or one GPU)."""

from __future__ import annotations

from dataclasses import dataclass

from internlm.components.strategy.base import ParallelLayout, Strategy
from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class SingleDeviceConfig:
    pass


@register("strategy", "single", SingleDeviceConfig)
class SingleDevice(Strategy):
    """No parallelism: the model and its optimizer state live on one device."""

    def __init__(self, config: SingleDeviceConfig):
        self.config = config

    def layout(self, world_size: int) -> ParallelLayout:
        if world_size != 1:
            raise ConfigError(
                f"strategy=single runs one process, but trainer.devices x trainer.num_nodes = {world_size}",
                where="strategy",
                fix="use strategy=ddp, strategy=hybrid_zero or strategy=fsdp for several devices",
            )
        return ParallelLayout()

    def fabric_strategy(self, layout: ParallelLayout, precision: str, parallelize=None, timeout=None):
        return "auto"  # one process: no collectives to time out
