"""liger-kernel's fused linear + cross-entropy (Triton), when the package imports on a CUDA device."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from internlm.components.loss.common import IGNORE_INDEX, chunked_token_losses, compute_dtype, count_labelled
from internlm.errors import ConfigError
from internlm.registry import register


@dataclass
class LigerConfig:
    ignore_index: int = IGNORE_INDEX  # label value that takes no loss


@register("loss", "liger", LigerConfig)
class LigerFusedCrossEntropy:
    """liger-kernel's LigerFusedLinearCrossEntropyFunction, summed over labelled tokens (CUDA only)."""

    def __init__(self, config: LigerConfig | None = None):
        self.config = config or LigerConfig()
        try:
            module = importlib.import_module("liger_kernel.ops.fused_linear_cross_entropy")
        except Exception as exc:
            raise ConfigError(
                f"loss 'liger' needs liger-kernel, which does not import ({type(exc).__name__}: {exc})",
                where="loss",
                fix="install the gpu extra (pip install liger-kernel) or use loss=chunked",
            ) from None
        self.function = module.LigerFusedLinearCrossEntropyFunction

    def __call__(self, hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hidden.device.type != "cuda":
            raise ConfigError(
                f"loss 'liger' runs Triton kernels and needs a CUDA device, got '{hidden.device.type}'",
                where="loss",
                fix="use loss=chunked (same memory saving, pure PyTorch)",
            )
        dtype = compute_dtype(hidden, head_weight)
        with torch.autocast(hidden.device.type, enabled=False):
            out = self.function.apply(
                hidden.to(dtype), head_weight.to(dtype), labels, None, None, self.config.ignore_index, 0.0, 0.0, "sum"
            )
        loss = out[0] if isinstance(out, tuple) else out
        return loss.float(), count_labelled(labels, self.config.ignore_index)

    def token_losses(self, hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token losses (liger's kernel only reduces): the chunked PyTorch path, 2048 tokens a chunk."""
        dtype = compute_dtype(hidden, head_weight)
        with torch.autocast(hidden.device.type, enabled=False):
            return chunked_token_losses(hidden.to(dtype), head_weight.to(dtype), labels, self.config.ignore_index, 2048)
