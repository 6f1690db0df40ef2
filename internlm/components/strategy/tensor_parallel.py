"""What a model must satisfy to be split over `tensor_parallel` ranks (checked at compile time).

Tensor parallelism (the `tensor_parallel` field of hybrid_zero / fsdp) splits q, k, v, gate and up
by output rows and o and down by input columns (Megatron-style, as DTensors), the embedding and
the LM head by vocabulary rows; norms run sequence-parallel. Every split must be even.
"""

from __future__ import annotations

from internlm.errors import ConfigError


def check_tensor_parallel(model_cfg, tensor: int) -> None:
    if tensor == 1:
        return
    attention = model_cfg.attention
    kv_heads = attention.num_kv_heads or attention.num_heads
    splits = {
        "model.attention.num_heads": attention.num_heads,
        "model.attention.num_kv_heads": kv_heads,
        "model.mlp.intermediate_size": model_cfg.mlp.intermediate_size,
        "model.vocab_size": model_cfg.vocab_size,
    }
    for key, value in splits.items():
        if value % tensor:
            raise ConfigError(
                f"{key.split('.')[-1]} {value} cannot be split evenly over tensor_parallel={tensor} ranks",
                where=f"strategy.tensor_parallel / {key}",
                fix=f"use a tensor_parallel that divides {value}",
            )
    if model_cfg.tie_embeddings:
        raise ConfigError(
            "tensor parallelism splits the embedding and the LM head differently, so they cannot be tied",
            where="strategy.tensor_parallel / model.tie_embeddings",
            fix="use tensor_parallel=1 for models with tied embeddings (shard them with shard_group_size instead)",
        )
