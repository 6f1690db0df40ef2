"""What the loss components share: the ignore index and the dtype the head matmul runs in."""

from __future__ import annotations

import torch

from internlm.batch import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "compute_dtype", "count_labelled"]


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on (fp32 master weights, bf16 matmuls), else the
    hidden states' dtype (bf16 weights, or fp32 in CPU tests)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def count_labelled(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels != ignore_index).sum()
