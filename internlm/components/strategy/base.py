"""How a strategy lays processes out: data-parallel replicas x shards x tensor-parallel ranks.

`layout(world_size)` is pure arithmetic, so compile can check a layout (and print it in the
plan) before any process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass


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
