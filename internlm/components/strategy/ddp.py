"""Plain data parallelism: full replicas, gradients all-reduced (PyTorch DDP through Fabric)."""

from __future__ import annotations

from dataclasses import dataclass

from internlm.components.strategy.base import ParallelLayout, Strategy
from internlm.registry import register


@dataclass
class DDPConfig:
    bucket_cap_mb: int = 25  # gradient all-reduce bucket size; larger buckets, fewer launches
    # DDP re-buckets gradients after its first step (in backward order), so a resumed run's first
    # step reduces in another order than the uninterrupted run did at that step: at 3+ processes
    # the sums differ in the last bit. True keeps the first layout for the whole run (torch skips
    # the rebuild when it searches for unused parameters: one autograd-graph walk per step), and
    # resume is bitwise at any process count.
    exact_resume: bool = True


@register("strategy", "ddp", DDPConfig)
class DDP(Strategy):
    """Every rank holds the whole model and optimizer; only the data differs."""

    def __init__(self, config: DDPConfig):
        self.config = config

    def layout(self, world_size: int) -> ParallelLayout:
        return ParallelLayout(replicate=world_size)

    def fabric_strategy(self, layout: ParallelLayout, precision: str, parallelize=None, timeout=None):
        from lightning.fabric.strategies import DDPStrategy

        return DDPStrategy(bucket_cap_mb=self.config.bucket_cap_mb, find_unused_parameters=self.config.exact_resume,
                           timeout=timeout)  # None: torch's default

