"""RMSNorm (pre-norm, no bias), as in InternLM and Llama."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class NormConfig:
    eps: float = 1e-6  # added to the mean square before the rsqrt; exports write it as rms_norm_eps

    def __post_init__(self):
        if not 0 < self.eps < 1:
            raise ConfigError(
                f"model.norm.eps={self.eps} must be a small positive number (0 divides by zero on an all-zero row)",
                where="model.norm.eps", fix="e.g. model.norm.eps=1e-6 (InternLM) or 1e-5",
            )


@register("model/norm", "rmsnorm", NormConfig)
class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale."""

    def __init__(self, config: NormConfig, dim: int):
        super().__init__()
        self.eps = config.eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.kernel = None  # an alternative implementation fn(x, weight, eps), set by the kernels step
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x, self.weight, self.eps)
        # F.rms_norm computes in the input dtype; upcast so bf16 runs match the fp32 reference.
        compute = torch.promote_types(x.dtype, torch.float32)
        return F.rms_norm(x.to(compute), self.weight.shape, self.weight.to(compute), self.eps).to(x.dtype)
