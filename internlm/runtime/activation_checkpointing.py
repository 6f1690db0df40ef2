"""Activation checkpointing: recompute parts of the transformer blocks in backward instead of
keeping their activations, applied to a built model from outside.

Policies (`trainer.activation_checkpointing`):

* none: keep everything (fastest while it fits).
* full: every block is recomputed from its input.
* selective: every k-th block (`every`: blocks 0, k, 2k, ...) is recomputed in full; the others
  keep their activations. k = 1 is `full`, k = 2 recomputes half the blocks.
* op: in every block, keep the outputs of the matmuls and of the attention kernel and recompute
  the cheap element-wise ops between them (norms, rotary, SiLU, products), through
  torch.utils.checkpoint's selective policy. Measured on one H200 under torch.compile it cost
  far more than the element-wise recomputation should (bench/NOTES.md): prefer none or
  selective until that is understood.

The wrapping keeps module names (no `_checkpoint_wrapped_module` in parameter names, so
checkpoints and sharding plans are unchanged): each chosen block's forward is replaced on the
instance. Apply it before `compile_blocks`, as `compile_blocks` compiles whatever forward it finds.
"""

from __future__ import annotations

import functools
import types
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from internlm.config import AC_POLICIES as POLICIES
from internlm.errors import ConfigError


def transformer_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The repeated blocks of a Transformer (its `layers` container, in order)."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (nn.ModuleDict, nn.ModuleList)):
        raise TypeError(f"{type(model).__name__} has no `layers` ModuleDict/ModuleList of transformer blocks")
    yield from (layers.values() if isinstance(layers, nn.ModuleDict) else layers)


def _ops_to_keep() -> set:
    """Matmuls and attention kernels: the expensive ops whose outputs `op` keeps."""
    names = [
        ("aten", "mm"),
        ("aten", "addmm"),
        ("aten", "bmm"),
        ("aten", "_scaled_mm"),  # fp8 matmuls (model.kernels.matmul=fp8_*)
        ("aten", "_scaled_dot_product_efficient_attention"),
        ("aten", "_scaled_dot_product_flash_attention"),
        ("aten", "_scaled_dot_product_cudnn_attention"),
        ("aten", "_scaled_dot_product_flash_attention_for_cpu"),
        ("torch_attn", "_varlen_attn"),
    ]
    keep = set()
    for namespace, op in names:
        packet = getattr(getattr(torch.ops, namespace), op, None)
        if packet is not None and hasattr(packet, "default"):
            keep.add(packet.default)
    flex = getattr(torch._higher_order_ops, "flex_attention", None)
    if flex is not None:
        keep.add(flex)
    return keep


@functools.lru_cache(maxsize=1)
def _kept_ops() -> frozenset:
    return frozenset(_ops_to_keep())


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _kept_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _op_selective_context():
    return create_selective_checkpoint_contexts(_keep_matmuls)


def _full_forward(self, *args, **kwargs):
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)


def _op_forward(self, *args, **kwargs):
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, context_fn=_op_selective_context, **kwargs)


def apply_activation_checkpointing(model: nn.Module, policy: str = "none", every: int = 1) -> nn.Module:
    """Apply `policy` (none | full | selective | op) to the model's blocks, in place; returns the model."""
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown activation checkpointing policy '{policy}'",
            where="trainer.activation_checkpointing",
            fix=f"choose one of: {', '.join(POLICIES)}",
        )
    if every < 1:
        raise ConfigError(
            f"activation_checkpointing_every must be >= 1, got {every}",
            where="trainer.activation_checkpointing_every",
            fix="use 1 to recompute every block, 2 for every other block, ...",
        )
    if policy == "none":
        return model
    for index, block in enumerate(transformer_blocks(model)):
        if "forward" in vars(block):
            raise RuntimeError("block forward already replaced: apply activation checkpointing before compile_blocks")
        if policy == "op":
            block.forward = types.MethodType(_op_forward, block)
        elif policy == "full" or index % every == 0:
            block.forward = types.MethodType(_full_forward, block)
    return model
