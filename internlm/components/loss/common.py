"""What the loss components share: the ignore index, the dtype the head matmul runs in, and
per-token losses computed a chunk at a time."""

from __future__ import annotations

import torch

from internlm.batch import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "compute_dtype", "count_labelled", "chunked_token_losses"]


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on (fp32 master weights, bf16 matmuls), else the
    hidden states' dtype (bf16 weights, or fp32 in CPU tests)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def count_labelled(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels != ignore_index).sum()


def _chunk_token_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")


def chunked_token_losses(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, chunk_tokens: int
) -> torch.Tensor:
    """Per-token cross-entropy [N] (0 where ignored) with only one chunk's fp32 logits alive:
    each chunk is recomputed in backward (activation checkpointing) instead of being kept."""
    from torch.utils.checkpoint import checkpoint

    pieces = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = min(start + chunk_tokens, hidden.shape[0])
        args = (hidden[start:end], weight, labels[start:end], ignore_index)
        needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        pieces.append(checkpoint(_chunk_token_losses, *args, use_reentrant=False) if needs_grad else _chunk_token_losses(*args))
    return torch.cat(pieces)
