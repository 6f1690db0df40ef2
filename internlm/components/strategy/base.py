"""How a strategy lays processes out: data-parallel replicas x shards x tensor-parallel ranks.

`layout(world_size)` is pure arithmetic, so compile can check a layout (and print it in the
plan) before any process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ParallelLayout:
    replicate: int = 1  # data-parallel groups holding full copies of the (sharded) state
    shard: int = 1  # ranks one copy is sharded over (ZeRO / FSDP group)
    tensor: int = 1  # tensor-parallel ranks

    @property
    def world_size(self) -> int:
        return self.replicate * self.shard * self.tensor

    @property
    def dp_size(self) -> int:
        """Ranks that see different data."""
        return self.replicate * self.shard


class Strategy:
    """What every strategy component answers; the defaults fit strategies that keep whole models
    (single, ddp). Sharding strategies override what differs."""

    def layout(self, world_size: int) -> ParallelLayout:
        raise NotImplementedError

    def check_model(self, model_cfg, layout: ParallelLayout) -> None:
        """What the model must satisfy for this layout (compile calls it, before any process group)."""

    def fabric_precision(self, precision: str) -> str:
        """The precision Fabric applies on top of the strategy's own casting."""
        return precision

    def init_on_meta(self, parameters: int) -> bool:
        """Create the model on the meta device and initialise it after sharding."""
        return False

    def sharding_options(self, precision: str) -> dict | None:
        """FSDP2 settings for the assembly pipeline (apply_fsdp's keywords); None = the strategy does
        not shard, and the model is wrapped by Fabric's own strategy instead."""
        return None

    def fabric_strategy(self, layout: ParallelLayout, precision: str, parallelize: Callable | None, timeout=None):
        """What lightning.Fabric gets as `strategy=`; `parallelize(model, fabric_mesh) -> model` is the
        assembly pipeline's parallel steps, for strategies that let Fabric call them; `timeout` (a
        timedelta) bounds every collective of the process group."""
        raise NotImplementedError
