"""Fused linear + cross-entropy in pure PyTorch: the [N, V] logits never exist at once.

The tokens are taken a chunk at a time. For each chunk the forward pass computes the logits,
the loss, and at once the gradient of the loss with respect to those logits (softmax - one_hot),
then folds it into the gradients of the hidden states and of the head weight; the chunk's logits
are freed before the next chunk. Backward only scales the stored gradients by the incoming
gradient (the loss is a sum, so d loss / d input is linear in it). Peak extra memory is the
head-weight gradient (V x H) plus a chunk's logits and their gradient: on the InternLM-7B head
with 8192 tokens, 2.4 GiB at 2048 tokens per chunk and 1.6 GiB at 1024, against 9.4 GiB for
plain eager cross-entropy (bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from internlm.components.loss.common import IGNORE_INDEX, chunked_token_losses, compute_dtype, count_labelled
from internlm.registry import register


@dataclass
class ChunkedConfig:
    ignore_index: int = IGNORE_INDEX  # label value that takes no loss
    chunk_tokens: int = 2048  # tokens per chunk: the fp32 logits held at once are chunk x vocab x 4 bytes
    compile: bool | None = None  # torch.compile the per-chunk step (fuses the softmax and its gradient); null = on CUDA


def chunk_loss_and_logit_grad(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: summed loss (fp32) and d loss / d logits in the matmul dtype (or None)."""
    logits = (hidden @ weight.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, 0)
    target_logit = logits.gather(1, safe_labels[:, None]).squeeze(1)
    loss = torch.where(valid, lse - target_logit, 0.0).sum()
    if not with_grad:
        return loss, None
    keep = valid[:, None].to(logits.dtype)
    grad = torch.exp(logits - lse[:, None]) * keep
    grad = grad.scatter_add(1, safe_labels[:, None], -keep)
    return loss, grad.to(hidden.dtype)


_compiled_step: Callable | None = None


def _step_fn(device: torch.device, wanted: bool | None) -> Callable:
    global _compiled_step
    if wanted is False or (wanted is None and device.type != "cuda"):
        return chunk_loss_and_logit_grad
    if _compiled_step is None:
        _compiled_step = torch.compile(chunk_loss_and_logit_grad, dynamic=False)
    return _compiled_step


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_tokens: int, ignore_index: int, step: Callable):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_grad = need_hidden or need_weight
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            end = min(start + chunk_tokens, hidden.shape[0])
            chunk = hidden[start:end]
            loss, grad_logits = step(chunk, weight, labels[start:end], ignore_index, with_grad)
            total += loss
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), chunk)  # accumulates in fp32 inside the matmul
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        # In place: the stored gradients are ours alone, and a second [V, H] copy would cost
        # as much memory as the head itself (backward through this graph runs once).
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight.mul_(grad_output.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None, None, None


@register("loss", "chunked", ChunkedConfig)
class ChunkedCrossEntropy:
    """Fused linear + cross-entropy over token chunks in pure PyTorch (never the full fp32 logits)."""

    def __init__(self, config: ChunkedConfig | None = None):
        self.config = config or ChunkedConfig()

    def __call__(self, hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = compute_dtype(hidden, head_weight)
        step = _step_fn(hidden.device, self.config.compile)
        # Casts happen outside the Function, so autograd casts the gradients back to the
        # parameters' dtype; inside, autocast is off and the matmuls run in `dtype`.
        with torch.autocast(hidden.device.type, enabled=False):
            loss = _ChunkedLinearCrossEntropy.apply(
                hidden.to(dtype), head_weight.to(dtype), labels, self.config.chunk_tokens, self.config.ignore_index, step
            )
        return loss, count_labelled(labels, self.config.ignore_index)

    def token_losses(self, hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(hidden, head_weight)
        with torch.autocast(hidden.device.type, enabled=False):
            return chunked_token_losses(
                hidden.to(dtype), head_weight.to(dtype), labels, self.config.ignore_index, self.config.chunk_tokens
            )
