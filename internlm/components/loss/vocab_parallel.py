"""Cross-entropy over an LM head split by vocabulary rows across tensor-parallel ranks.

Each rank multiplies the (replicated) hidden states by its rows of the head, so only [tokens,
vocab / tp] logits exist per rank; the softmax normaliser and the target logit are summed over
the ranks (Megatron's vocab-parallel cross-entropy). The backward needs no communication for the
logits; the hidden states' gradient, a partial sum on each rank, is all-reduced.

PyTorch's `loss_parallel()` context does the same for DTensor logits but must also wrap the
backward call, which belongs to the training loop; these autograd functions carry their own
collectives instead, so the model's in-forward loss works unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from internlm.batch import IGNORE_INDEX


class _CopyToTensorParallel(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient (each rank holds a partial sum of it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of labelled tokens from this rank's logits [N, V/tp] (fp32)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, group, ignore_index: int):
        local_vocab = logits.shape[-1]
        row_max = logits.detach().max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max[:, None]
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)

        local_ids = labels - vocab_start
        here = (local_ids >= 0) & (local_ids < local_vocab)  # targets whose logit this rank holds
        local_ids = torch.where(here, local_ids, torch.zeros_like(local_ids))
        target = shifted.gather(-1, local_ids[:, None]).squeeze(-1) * here
        dist.all_reduce(target, op=dist.ReduceOp.SUM, group=group)

        labelled = labels != ignore_index
        losses = (sum_exp.log() - target) * labelled
        ctx.save_for_backward(exp.div_(sum_exp[:, None]), local_ids, here & labelled, labelled)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        softmax, local_ids, target_here, labelled = ctx.saved_tensors
        grad = softmax * labelled[:, None]
        grad.scatter_add_(-1, local_ids[:, None], -target_here[:, None].to(grad.dtype))
        return grad * grad_losses[:, None], None, None, None, None


class VocabParallelCrossEntropy:
    """The model's loss when its LM head is split by rows across tensor-parallel ranks (a DTensor
    weight: the group is read from its mesh, so the loss is chosen before any mesh exists)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = ignore_index

    def token_losses(self, hidden: torch.Tensor, head_weight, labels: torch.Tensor) -> torch.Tensor:
        mesh = head_weight.device_mesh
        group, rank = mesh.get_group(), mesh.get_local_rank()
        local_weight = head_weight.to_local()  # [vocab / tp, hidden]; its gradient stays row-sharded
        hidden = _CopyToTensorParallel.apply(hidden, group)
        logits = F.linear(hidden, local_weight).float()
        vocab_start = rank * local_weight.shape[0]
        return _VocabParallelCrossEntropy.apply(logits, labels, vocab_start, group, self.ignore_index)

    def __call__(self, hidden: torch.Tensor, head_weight, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.token_losses(hidden, head_weight, labels).sum(), (labels != self.ignore_index).sum()
