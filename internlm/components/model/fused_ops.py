"""Interchangeable implementations of the model's small ops: RMSNorm, the SwiGLU gate, rotary.

`torch` is plain PyTorch (what norm.py, mlp.py and rotary.py compute; torch.compile fuses it per
block); `liger` is liger-kernel's Triton kernels, when the package imports on a CUDA device.
`auto` is the measured fastest on the device (bench/RESULTS.md, kernel table): on an H200 under
torch.compile that is plain PyTorch for all three, so liger is only used when asked for.

Selection is a config (`KernelsConfig`, proposed as `model.kernels`); `apply_kernels(model, ...)`
installs the chosen implementations into an existing model from outside, the way parallelism is
applied, so the model code keeps the one plain definition.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from internlm.components.model.attention import SelfAttention
from internlm.components.model.mlp import SwiGLU
from internlm.components.model.norm import RMSNorm
from internlm.components.model.rotary import apply_rotary
from internlm.errors import ConfigError

IMPLS = ("auto", "torch", "liger")


@dataclass
class KernelsConfig:
    rms_norm: str = "auto"  # auto | torch | liger: RMSNorm forward + backward
    swiglu: str = "auto"  # auto | torch | liger: silu(gate) * up
    rotary: str = "auto"  # auto | torch | liger: rotary embedding of q and k
    matmul: str = "bf16"  # bf16 | fp8_tensorwise | fp8_rowwise: the blocks' linear layers (internlm/runtime/float8.py)
    fp8_fast_accum: str = "forward"  # forward | all | none: the fp8 gemms that skip fp32 promotion (faster, less exact)


# Measured fastest per op on CUDA (bench/RESULTS.md); `auto` on other devices is always torch.
AUTO_ON_CUDA = {"rms_norm": "torch", "swiglu": "torch", "rotary": "torch"}


# --- plain PyTorch ------------------------------------------------------------------------------


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As RMSNorm.forward: computed in fp32 (F.rms_norm keeps the input dtype), cast back."""
    return F.rms_norm(x.float(), weight.shape, weight.float(), eps).to(x.dtype)


def torch_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def torch_rotary(q, k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, S, Hq, D], k [B, S, Hkv, D], cos/sin [B, S, 1, D]."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


# --- liger-kernel (Triton; CUDA only) -----------------------------------------------------------


def _liger(module: str, attr: str):
    return getattr(importlib.import_module(f"liger_kernel.ops.{module}"), attr)


def liger_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # "llama" casting: the mean square in fp32, the normalised value cast to x's dtype before the scale.
    return _liger("rms_norm", "LigerRMSNormFunction").apply(x, weight, eps, 0.0, "llama", False)


def liger_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _liger("swiglu", "LigerSiLUMulFunction").apply(gate, up)


def liger_rotary(q, k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    # liger takes q as (B, H, S, D) views of (B, S, H, D) storage, which is our layout transposed.
    q_out, k_out = _liger("rope", "LigerRopeFunction").apply(
        q.transpose(1, 2), k.transpose(1, 2), cos.squeeze(2), sin.squeeze(2)
    )
    return q_out.transpose(1, 2), k_out.transpose(1, 2)


IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {
    "rms_norm": {"torch": torch_rms_norm, "liger": liger_rms_norm},
    "swiglu": {"torch": torch_silu_mul, "liger": liger_silu_mul},
    "rotary": {"torch": torch_rotary, "liger": liger_rotary},
}


def liger_unavailable(device: torch.device) -> str | None:
    """None when liger-kernel can run on `device`, else why not."""
    if device.type != "cuda":
        return "liger-kernel's Triton kernels need a CUDA device"
    try:
        importlib.import_module("liger_kernel.ops.rms_norm")
    except Exception as exc:
        return f"liger-kernel does not import ({type(exc).__name__}: {exc}); install the gpu extra: pip install liger-kernel"
    return None


@dataclass(frozen=True)
class Kernels:
    names: dict[str, str]  # op -> chosen implementation name
    rms_norm: Callable
    swiglu: Callable
    rotary: Callable


def resolve_kernels(config: KernelsConfig, device: torch.device) -> Kernels:
    names = {}
    for op in IMPLEMENTATIONS:
        wanted = getattr(config, op)
        if wanted not in IMPLS:
            raise ConfigError(f"unknown {op} implementation '{wanted}'", where=f"model.kernels.{op}", fix=f"choose one of: {', '.join(IMPLS)}")
        if wanted == "auto":
            wanted = AUTO_ON_CUDA[op] if device.type == "cuda" else "torch"
            if wanted == "liger" and liger_unavailable(device):
                wanted = "torch"
        if wanted == "liger" and (reason := liger_unavailable(device)):
            raise ConfigError(
                f"{op} implementation 'liger' is not available on {device}: {reason}",
                where=f"model.kernels.{op}",
                fix=f"use model.kernels.{op}=auto (plain PyTorch, compiled per block)",
            )
        names[op] = wanted
    return Kernels(names, *(IMPLEMENTATIONS[op][names[op]] for op in ("rms_norm", "swiglu", "rotary")))


def apply_kernels(model: nn.Module, kernels: Kernels) -> nn.Module:
    """Set the chosen implementations on the model's RMSNorm, SwiGLU and attention modules
    (their `kernel` / `rotary_kernel` slots). With plain `torch` everywhere nothing is set and the
    modules run their own definition."""
    for module in model.modules():
        if isinstance(module, RMSNorm) and kernels.names["rms_norm"] != "torch":
            module.kernel = kernels.rms_norm
        elif isinstance(module, SwiGLU) and kernels.names["swiglu"] != "torch":
            module.kernel = kernels.swiglu
        elif isinstance(module, SelfAttention) and kernels.names["rotary"] != "torch":
            module.rotary_kernel = kernels.rotary
    return model
