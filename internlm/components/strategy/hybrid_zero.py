"""Hybrid ZeRO: the training state sharded inside groups of data-parallel ranks and replicated
across the groups (HSDP on FSDP2), with optional tensor parallelism inside each replica.

InternLM's idea: sharding over the whole data-parallel group makes every gather and reduce span
the slow links between nodes; sharding inside a node (`shard_group_size: 8`, InternLM's `zero1`)
keeps those on NVLink and leaves one all-reduce of each rank's shard between nodes. Here it is
FSDP2 (`fully_shard`) on a (replicate, shard) device mesh, through Lightning Fabric's
ModelParallelStrategy. `strategy=fsdp` is this strategy with `shard_group_size: -1`.

The mesh is replicate x shard x tensor, tensor innermost: tensor-parallel peers are neighbouring
ranks (one node's NVLink), and data-parallel rank = global rank // tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from internlm.components.strategy.base import ParallelLayout, Strategy
from internlm.components.strategy.gradient_sync import sharded_gradient_accumulation
from internlm.components.strategy.tensor_parallel import check_tensor_parallel
from internlm.errors import ConfigError
from internlm.registry import register


REDUCE_DTYPES = ("fp32", "bf16")


@dataclass
class HybridZeroConfig:
    shard_group_size: int = 8  # ranks one copy is sharded over: 8 = a node (InternLM's zero1), -1 = all data-parallel ranks, 1 = none; capped at the data-parallel size
    tensor_parallel: int = 1  # ranks each block's matmuls are split over (must divide the heads); > 1 uses a vocab-parallel loss
    reshard_after_forward: bool = True  # ZeRO-3: free gathered weights after forward, gather again in backward; false = ZeRO-2 (less traffic, more memory)
    reduce_dtype: str = "fp32"  # fp32 | bf16: dtype of the gradient reduce-scatter / all-reduce under bf16 compute; bf16 halves the bytes (InternLM reduced in low precision)
    prefetch: int = 1  # blocks gathered ahead of use, so communication overlaps compute; 0 = FSDP2's implicit prefetch
    meta_init_above: int = 1_000_000_000  # larger models start on the meta device and are initialised per shard (same at any world size, not the one-process init)


@register("strategy", "hybrid_zero", HybridZeroConfig)
class HybridZero(Strategy):
    """FSDP2 sharding inside groups of `shard_group_size` ranks, replicated across groups (HSDP); + tensor parallel."""

    def __init__(self, config: HybridZeroConfig):
        self.config = config

    def layout(self, world_size: int) -> ParallelLayout:
        tensor = self.config.tensor_parallel
        if tensor < 1:
            raise ConfigError(f"tensor_parallel must be >= 1, got {tensor}", where="strategy.tensor_parallel", fix="use 1 (off), 2, 4 or 8")
        if world_size % tensor:
            raise ConfigError(
                f"{world_size} processes cannot form tensor-parallel groups of {tensor}",
                where="strategy.tensor_parallel / trainer.devices x trainer.num_nodes",
                fix=f"use a tensor_parallel that divides {world_size}: {divisors(world_size)}",
            )
        if self.config.reduce_dtype not in REDUCE_DTYPES:
            raise ConfigError(
                f"unknown reduce_dtype '{self.config.reduce_dtype}'", where="strategy.reduce_dtype", fix=f"choose one of: {', '.join(REDUCE_DTYPES)}"
            )
        data_parallel = world_size // tensor
        shard = self.config.shard_group_size
        if shard == 0 or shard < -1:
            raise ConfigError(
                f"shard_group_size must be -1 or >= 1, got {shard}",
                where="strategy.shard_group_size",
                fix="use -1 (shard over all data-parallel ranks), 1 (no sharding) or a group size such as 8",
            )
        shard = data_parallel if shard == -1 else min(shard, data_parallel)
        if data_parallel % shard:
            raise ConfigError(
                f"the {data_parallel} data-parallel ranks cannot be split into shard groups of {shard}",
                where="strategy.shard_group_size",
                fix=f"use a shard_group_size that divides {data_parallel}: {divisors(data_parallel)} (or -1)",
            )
        return ParallelLayout(replicate=data_parallel // shard, shard=shard, tensor=tensor)

    def check_model(self, model_cfg, layout: ParallelLayout) -> None:
        """What the model must satisfy for this layout (compile calls it, before any process group)."""
        check_tensor_parallel(model_cfg, layout.tensor)

    def fabric_precision(self, precision: str) -> str:
        """FSDP2 casts the parameters to bf16 itself (MixedPrecisionPolicy: bf16 compute and gathers,
        fp32 gradient reduction and master weights), so Fabric must not autocast on top of it."""
        return "32-true" if precision == "bf16-mixed" else precision

    def init_on_meta(self, parameters: int) -> bool:
        return parameters > self.config.meta_init_above

    def sharding_options(self, precision: str) -> dict:
        return {
            # bf16 gathers and compute, fp32 gradient reduction and master weights (torchtitan's choice)
            "bf16_compute": precision == "bf16-mixed",
            "reshard_after_forward": self.config.reshard_after_forward,
            "prefetch": self.config.prefetch,
            "reduce_dtype": self.config.reduce_dtype,
        }

    def fabric_strategy(self, layout: ParallelLayout, precision: str, parallelize, timeout=None):
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(
            parallelize_fn=parallelize,
            data_parallel_size=layout.dp_size,
            tensor_parallel_size=layout.tensor,
            timeout=timeout,  # None: torch's default
        )
        strategy._backward_sync_control = sharded_gradient_accumulation()  # keep gradients sharded between micro batches
        return strategy


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
