"""The reference loss: logits = hidden @ head^T, then fp32 cross-entropy summed over tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from internlm.components.loss.common import IGNORE_INDEX, count_labelled
from internlm.registry import register


@dataclass
class CrossEntropyConfig:
    ignore_index: int = IGNORE_INDEX  # label value that takes no loss


@register("loss", "cross_entropy", CrossEntropyConfig)
class CrossEntropy:
    """Plain F.linear + F.cross_entropy; materialises the [N, V] logits in fp32 (the reference)."""

    def __init__(self, config: CrossEntropyConfig | None = None):
        self.config = config or CrossEntropyConfig()

    def __call__(self, hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(hidden, head_weight).float()
        loss = F.cross_entropy(logits, labels, ignore_index=self.config.ignore_index, reduction="sum")
        return loss, count_labelled(labels, self.config.ignore_index)

    def token_losses(self, hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, head_weight).float()
        return F.cross_entropy(logits, labels, ignore_index=self.config.ignore_index, reduction="none")
