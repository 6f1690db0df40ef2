"""q/k/v, and gate/up, each as one matmul in training (`model.kernels.joint_projections=true`).

The linears that read the same input keep their own parameters (so checkpoint keys, adapters'
targets and the optimizer see the model as defined); each forward multiplies the input by their
weights concatenated on the fly and splits the result. One [T, 4096] x [4096, 12288] matmul
replaces three of [4096, 4096], and in the backward one matmul (over K = 12288) replaces three
and the two additions of their input gradients.

With torchao's fp8 layers (`model.kernels.matmul=fp8_*`) the concatenated weight goes through
torchao's own fp8 matmul, so torch.compile folds the concatenation into the weight's fp8 cast,
which reads every weight once anyway. The grouped weights then share one scale, as do their
output gradients (as Transformer Engine's fused q/k/v layer does). In bf16 the concatenation is
a copy of the weights in each forward.

Where it cannot apply it is refused: layers an adapter changed (LoRA adds its own matmuls),
tensor-parallel layers (their shards are not the concatenation's) and fp8 weights gathered in
fp8 by FSDP2 (a concatenation of torchao's gathered tensors is not an fp8 tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from internlm.components.model.attention import SelfAttention
from internlm.components.model.mlp import SwiGLU
from internlm.errors import ConfigError

WHERE = "model.kernels.joint_projections"


def _float8_linear_type():
    try:
        from torchao.float8.float8_linear import Float8Linear
    except ImportError:
        return None
    return Float8Linear


class JointProjection:
    """Linears reading one input, called as one: `joint(x)` returns their outputs, in order.
    A plain callable, not a module: the linears stay where they are in the module tree."""

    def __init__(self, linears: list[nn.Linear]):
        kinds = {type(linear) for linear in linears}
        if len(kinds) != 1:
            raise ValueError(f"cannot join linears of different kinds: {sorted(k.__name__ for k in kinds)}")
        has_bias = [linear.bias is not None for linear in linears]
        if any(has_bias) and not all(has_bias):
            raise ValueError("cannot join linears where only some have a bias")
        float8 = _float8_linear_type()
        self.float8 = float8 is not None and isinstance(linears[0], float8)
        if self.float8 and len({(linear.config, linear.linear_mm_config) for linear in linears}) != 1:
            raise ValueError("cannot join fp8 linears with different fp8 configurations")
        self.linears = linears
        self.sizes = [linear.out_features for linear in linears]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight = torch.cat([linear.weight for linear in self.linears])
        bias = torch.cat([linear.bias for linear in self.linears]) if self.linears[0].bias is not None else None
        if self.float8:
            out = self._float8_matmul(x, weight)
            if bias is not None:
                out = out + bias.to(out.dtype)
        else:
            out = F.linear(x, weight, bias)
        return out.split(self.sizes, dim=-1)

    def _float8_matmul(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

        first = self.linears[0]
        if torch.is_autocast_enabled():  # as Float8Linear.forward: the output takes autocast's dtype
            x = x.to(torch.get_autocast_gpu_dtype())
        return matmul_with_hp_or_float8_args.apply(x, weight.t(), first.linear_mm_config, first.config)


def why_not(linears: list[nn.Linear]) -> str | None:
    """None when `linears` can be joined, else why not."""
    float8 = _float8_linear_type()
    for linear in linears:
        if float8 is not None and isinstance(linear, float8):
            if getattr(linear.config, "enable_fsdp_float8_all_gather", False):
                return f"{type(linear).__name__} gathers its weight in fp8 under FSDP2 sharding"
        elif type(linear) is not nn.Linear:
            return f"{type(linear).__name__} is not a plain linear layer (an adapter changed it)"
    return None


def join_projections(model: nn.Module, tensor_parallel: int = 1) -> int:
    """Set every attention's q/k/v and every SwiGLU's gate/up to run as one matmul each; after
    the fp8 conversion (it must see the final layers), before tensor parallelism and compile.
    Returns how many groups were joined."""
    fix = f"set {WHERE}=false"
    if tensor_parallel > 1:
        raise ConfigError(f"{WHERE}=true cannot split joined weights over tensor_parallel={tensor_parallel} ranks",
                          where=WHERE, fix=fix)
    groups = []
    for name, module in model.named_modules():
        if isinstance(module, SelfAttention):
            groups.append((name, module, "joint_qkv", [module.q_proj, module.k_proj, module.v_proj]))
        elif isinstance(module, SwiGLU):
            groups.append((name, module, "joint_gate_up", [module.gate_proj, module.up_proj]))
    for name, module, slot, linears in groups:
        if reason := why_not(linears):
            raise ConfigError(f"{WHERE}=true cannot join the projections of {name}: {reason}", where=WHERE, fix=fix)
    for name, module, slot, linears in groups:
        setattr(module, slot, JointProjection(linears))
    return len(groups)
