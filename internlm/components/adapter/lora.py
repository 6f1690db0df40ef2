"""LoRA (Hu et al. 2021): y = W x + b + (alpha / rank) * B A dropout(x), with W frozen.

Applied from outside to a built model: every `nn.Linear` whose name matches a pattern of
`targets` becomes a `LoRALinear` in place (its class is swapped and two small linears
`lora_A` [rank, in] and `lora_B` [out, rank] are added as children). Swapping the class instead of
wrapping keeps every base parameter's name (`layers.0.self_attn.q_proj.weight`), so checkpoints,
exports and weight loading see the model they know, and the adapter tensors are named as PEFT
names them (`...q_proj.lora_A.weight`). B starts at zero: the model's output is unchanged at step 0.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class LoRAConfig:
    rank: int = 16  # r: the inner dimension of B A (adapter size grows linearly with it)
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input only (the base path is untouched)
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )  # module-name patterns (fnmatch) matched against the full name or its last part: q_proj, mlp.*_proj, layers.0.*


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank update beside its frozen weight (see the module docstring)."""

    lora_A: nn.Linear
    lora_B: nn.Linear
    lora_dropout: nn.Module
    scaling: float
    adapter_enabled: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapter_enabled:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """B A * scaling, the [out, in] matrix the adapter adds to the weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling


class ZeroInitLinear(nn.Linear):
    """LoRA's B: zero whenever (re)initialised, also by a meta-device model's shard-by-shard init."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


def attach_lora(linear: nn.Linear, rank: int, alpha: float, dropout: float) -> LoRALinear:
    linear.__class__ = LoRALinear
    device, dtype = linear.weight.device, linear.weight.dtype
    linear.lora_A = nn.Linear(linear.in_features, rank, bias=False, device=device, dtype=dtype)
    linear.lora_B = ZeroInitLinear(rank, linear.out_features, bias=False, device=device, dtype=dtype)
    linear.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    linear.scaling = alpha / rank
    linear.adapter_enabled = True
    reset_lora(linear)
    return linear


@torch.no_grad()
def reset_lora(module: LoRALinear) -> None:
    """PEFT's init: A Kaiming-uniform, B zero (so B A = 0)."""
    if module.lora_A.weight.is_meta:
        return
    nn.init.kaiming_uniform_(module.lora_A.weight, a=math.sqrt(5))
    nn.init.zeros_(module.lora_B.weight)


def matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_modules(model))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model inside the block (the DPO reference with task.reference=adapter_off)."""
    modules = [m for _, m in lora_modules(model)]
    for m in modules:
        m.adapter_enabled = False
    try:
        yield model
    finally:
        for m in modules:
            m.adapter_enabled = True


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W += B A * scaling) and turn the module back into a
    plain nn.Linear: the result is the stock architecture with the same outputs."""
    for _, module in list(lora_modules(model)):
        module.weight.copy_((module.weight.float() + module.delta_weight()).to(module.weight.dtype))
        for child in ("lora_A", "lora_B", "lora_dropout"):
            delattr(module, child)
        for attr in ("scaling", "adapter_enabled"):
            module.__dict__.pop(attr, None)
        module.__class__ = nn.Linear
    return model


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors with the adapters folded in (for exports read tensor by tensor)."""
    out = {k: v for k, v in state.items() if ".lora_" not in k}
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        prefix = key[: -len(".lora_A.weight")]
        a, b = state[key].float(), state[f"{prefix}.lora_B.weight"].float()
        weight = out[f"{prefix}.weight"]
        out[f"{prefix}.weight"] = (weight.float() + (b @ a) * scaling).to(weight.dtype)
    return out


@register("adapter", "lora", LoRAConfig)
class LoRA:
    """Low-rank adapters on the linears named by `targets`; only adapter parameters train."""

    def __init__(self, config: LoRAConfig):
        if config.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {config.rank}", where="adapter.rank", fix="e.g. adapter.rank=16")
        if not 0.0 <= config.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {config.dropout}", where="adapter.dropout", fix="e.g. 0.05")
        if not config.targets:
            raise ConfigError("LoRA needs target modules", where="adapter.targets", fix="e.g. adapter.targets='[q_proj,v_proj]'")
        self.config = config

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.rank

    def targets_in(self, model: nn.Module) -> list[str]:
        """Names of the linears these patterns select; refuses a pattern that selects none."""
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
        chosen = []
        for pattern in self.config.targets:
            hits = [name for name in linears if matches(name, pattern)]
            if not hits:
                leaves = sorted({n.rsplit(".", 1)[-1] for n in linears})
                raise ConfigError(
                    f"LoRA target '{pattern}' matches no linear module of the model",
                    where="adapter.targets",
                    fix=f"use module names such as {', '.join(leaves)}",
                )
            chosen += [h for h in hits if h not in chosen]
        return chosen

    def apply(self, model: nn.Module) -> nn.Module:
        names = self.targets_in(model)
        for param in model.parameters():
            param.requires_grad_(False)
        for name in names:
            attach_lora(model.get_submodule(name), self.config.rank, self.config.alpha, self.config.dropout)
        return model
