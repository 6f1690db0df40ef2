"""cuDNN's fused attention over packed documents: one kernel for the whole batch, causal inside
each document, in the THD ("ragged") layout that torch's nested-tensor SDPA uses.

q, k and v are the batch flattened to [T, H, D] (T = rows x row length); `cu_seqlens` [N + 1]
says where each document starts, as for flash-attn's varlen kernels. torch exposes the kernel as
`aten._cudnn_attention_forward` / `_backward` with cumulative sequence lengths; they are wrapped
here as custom ops (opaque to torch.compile, with fake shapes) and joined by autograd. Where
NVIDIA's cudnn-frontend package is installed (`pip install 'internlm[cudnn]'`), the same kernel is
reached through its graph API instead (cudnn_ragged_graphs.py), with plans we build once.

torch keys its cache of cuDNN execution plans on the document count and the longest document: a
new pair costs a plan build on the host. So the longest document is passed as the row length (a
constant; it only bounds the launch grid) and the document count is padded to a bucket with
empty documents, and a run meets a handful of plans, not one per batch. (torch 2.11 caches no
ragged plan at all: every call builds one, 36-39 ms on an H200, bench/cudnn_documents.py.)

Some torch builds compute the ragged backward wrongly: torch 2.11 sizes cuDNN's dQ accumulator
from the head dim instead of the longest document (pytorch/pytorch#186142), so dq and dk come
back as garbage while the forward and dv are right. `self_check` runs a small case against a
per-document reference before the backend is offered, and names the problem when there is one.
"""

from __future__ import annotations

import functools

import torch

from internlm.components.model import cudnn_ragged_graphs

MIN_BUCKET = 8  # document counts below this share one plan
SELF_CHECK_TOLERANCE = 2e-2  # relative L2 error of bf16 results against the fp32 reference


def padded_count(documents: int) -> int:
    """The bucket `documents` is padded to: the next power of two (at least MIN_BUCKET), so a run
    builds O(log(documents)) plans and pads less than 2x."""
    return max(MIN_BUCKET, 1 << max(documents - 1, 0).bit_length())


def pad_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """`cu_seqlens` [N + 1] extended with empty documents at the end to padded_count(N) + 1
    entries (the last offset repeated), int32 on the same device."""
    documents = cu_seqlens.numel() - 1
    extra = padded_count(documents) - documents
    cu = cu_seqlens.to(torch.int32)
    if extra == 0:
        return cu
    return torch.cat([cu, cu[-1:].expand(extra)])


@torch.library.custom_op("internlm::cudnn_document_attention", mutates_args=())
def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if cudnn_ragged_graphs.frontend() is not None:
        return cudnn_ragged_graphs.forward(q, k, v, cu_seqlens, max_len, scale)
    out, lse, *_ = torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu_seqlens, cu_seqlens, max_len, max_len, True, 0.0, True, False, scale=scale
    )
    return out, lse


@_forward.register_fake
def _forward_fake(q, k, v, cu_seqlens, max_len, scale):
    # what the kernel returns for ragged inputs: out like q, log-sum-exp [T, H, 1] in fp32
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[1], 1), dtype=torch.float32)


@torch.library.custom_op("internlm::cudnn_document_attention_backward", mutates_args=())
def _backward_op(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    cu_seqlens: torch.Tensor, max_len: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if cudnn_ragged_graphs.frontend() is not None:
        return cudnn_ragged_graphs.backward(grad.contiguous(), q, k, v, out, lse, cu_seqlens, max_len, scale)
    unused = q.new_empty(0)  # dropout's seed and offset (no dropout); the bias must be None, not empty
    dq, dk, dv = torch.ops.aten._cudnn_attention_backward(
        grad.contiguous(), q, k, v, out, lse, unused, unused, None,
        cu_seqlens, cu_seqlens, max_len, max_len, 0.0, True, scale=scale,
    )
    return dq, dk, dv


@_backward_op.register_fake
def _backward_fake(grad, q, k, v, out, lse, cu_seqlens, max_len, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_len, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_len, ctx.scale = max_len, scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _backward_op(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_len, ctx.scale)
    return dq, dk, dv, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def document_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, scale: float
) -> torch.Tensor:
    """Causal attention within each document of the flattened batch: q, k, v [T, H, D] with equal
    head counts (repeat grouped k/v first), `cu_seqlens` padded (pad_cu_seqlens) on q's device;
    returns [T, H, D]."""
    out, _ = _forward(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, max_len, scale)
    return out


def self_check(device: torch.device) -> str | None:
    """The verdict of check_kernel for `device`, computed once per process (the program and its
    logs ask several times)."""
    return _verdict(str(device))


@functools.cache
def _verdict(device: str) -> str | None:
    return check_kernel(torch.device(device))


def check_kernel(device: torch.device) -> str | None:
    """None if forward and backward match per-document attention in fp32 on `device` (documents
    longer than the head dim, where the torch 2.11 bug shows), else what is wrong."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    # 256 tokens in a bucket of 8 documents: even torch 2.11's undersized accumulator (8 x 64 rows
    # per head) holds them, so the faulty kernel answers wrongly instead of writing out of bounds
    bounds = [0, 100, 256]
    q, k, v, grad = (torch.randn(256, 2, 64, generator=generator).to(device, torch.bfloat16) for _ in range(4))
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = document_attention(*ins, pad_cu_seqlens(torch.tensor(bounds, device=device)), 256, 0.125)
    out.backward(grad)
    refs = [t.float().requires_grad_() for t in (q, k, v)]
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in refs)
        pieces.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.125).transpose(0, 1))
    expected = torch.cat(pieces)
    expected.backward(grad.float())
    wrong = []
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *(t.grad for t in ins)), (expected, *(t.grad for t in refs))):
        error = float((got.detach().float() - ref.detach()).norm() / ref.detach().norm())
        if not error < SELF_CHECK_TOLERANCE:  # NaN fails too
            wrong.append(f"{name} off by {error:.3g}")
    if not wrong:
        return None
    if cudnn_ragged_graphs.frontend() is not None:
        return (f"cuDNN's packed-document kernel (cudnn-frontend {cudnn_ragged_graphs.frontend().__version__}, cuDNN "
                f"{torch.backends.cudnn.version()}) gives wrong results: {', '.join(wrong)} relative to per-document attention")
    return (f"cuDNN's packed-document kernel gives wrong results in this torch ({torch.__version__}, cuDNN "
            f"{torch.backends.cudnn.version()}): {', '.join(wrong)} relative to per-document attention "
            "(torch 2.11's ragged backward: pytorch/pytorch#186142; `pip install 'internlm[cudnn]'` "
            "reaches cuDNN through its own graph API instead)")
