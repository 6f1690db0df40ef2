"""One matmul for q/k/v and one for gate/up in decode: the weights of each group stored as one
tensor, the model's own Linear parameters turned into views of it (no extra memory, the model's
forward unchanged).

At batch 1 a decode step is ~7 matrix-vector products per layer, each a kernel whose fixed cost
(launch, ramp-up, tail) is a visible share of a ~10 us read of a 32 MB q/k/v weight; three reads
of one 96 MB weight and two of one 172 MB gate/up weight pay it once. `decode_layer` uses these
when the runner passes them (see decode_runner.py); they must match the modules' math exactly
(tested against the module path).
"""

from __future__ import annotations

import torch
from torch import nn


# Per layer: (qkv weight, qkv bias or None, gate/up weight, gate/up bias or None). Plain tensors,
# so torch.compile takes them as inputs and one compiled block serves every layer.
FusedBlock = tuple


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        weight = torch.cat([linear.weight for linear in linears])
        has_bias = [linear.bias is not None for linear in linears]
        if any(has_bias) and not all(has_bias):
            raise ValueError("cannot fuse linears where only some have a bias")
        bias = torch.cat([linear.bias for linear in linears]) if all(has_bias) else None
    start = 0
    for linear in linears:
        rows = linear.out_features
        linear.weight = nn.Parameter(weight[start:start + rows], requires_grad=linear.weight.requires_grad)
        if bias is not None:
            linear.bias = nn.Parameter(bias[start:start + rows], requires_grad=linear.bias.requires_grad)
        start += rows
    return weight, bias


def fuse_blocks(model) -> list[FusedBlock] | None:
    """FusedBlock per layer (made once per model, then reused), or None where a block has a custom
    MLP kernel or another MLP (its math is not ours to copy)."""
    blocks = list(model.layers.values())
    made = getattr(model, "_inference_fused_blocks", None)
    if made is not None and all(b.self_attn.q_proj.weight.data_ptr() == f[0].data_ptr() for b, f in zip(blocks, made)):
        return made
    for block in blocks:
        attn, mlp = block.self_attn, block.mlp
        if getattr(mlp, "kernel", None) is not None or not hasattr(mlp, "gate_proj") or not hasattr(attn, "q_proj"):
            return None
    model._inference_fused_blocks = [
        (*_fuse([b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj]), *_fuse([b.mlp.gate_proj, b.mlp.up_proj]))
        for b in blocks]
    return model._inference_fused_blocks
