"""Attention kernels for packed documents, interchangeable by config (`model.attention.backend`).

Every backend computes the same function: causal attention that never crosses a document
boundary (DocumentLayout). `eager` is the plain reference used by the tests; the others are
fast paths that must match it. `auto` picks the fastest backend available on the device.

A backend is a function ``(q, k, v, layout, scale) -> out`` with q [B, S, Hq, D] and k, v
[B, S, Hkv, D] (grouped-query attention: Hq is a multiple of Hkv), returning [B, S, Hq, D].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from internlm.components.model.documents import DocumentLayout
from internlm.errors import ConfigError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DocumentLayout, float], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    available: Callable[[torch.device], str | None]  # None if usable, else the reason it is not
    summary: str


BACKENDS: dict[str, Backend] = {}

# Fastest first: `auto` takes the first one available. The order on CUDA is the measured one
# (bench/RESULTS.md, kernel table); on CPU only the dense-mask paths run.
AUTO_ORDER: list[str] = []


def backend(name: str, summary: str, available: Callable[[torch.device], str | None] = lambda d: None):
    def decorate(fn: AttentionFn) -> AttentionFn:
        BACKENDS[name] = Backend(name, fn, available, summary)
        return fn

    return decorate


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


@backend("eager", "matmul + masked softmax in fp32: the reference")
def eager_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), _repeat_kv(k, groups).transpose(1, 2), _repeat_kv(v, groups).transpose(1, 2)
    compute = torch.promote_types(q.dtype, torch.float32)  # at least fp32, fp64 stays fp64
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~layout.dense_mask(), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.to(compute)).to(q.dtype).transpose(1, 2)


@backend("sdpa", "torch SDPA with a dense document mask (any device)")
def sdpa_dense_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), _repeat_kv(k, groups).transpose(1, 2), _repeat_kv(v, groups).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense_mask(), scale=scale)
    return out.transpose(1, 2)


def resolve(name: str, device: torch.device) -> Backend:
    """The backend to use for `name` on `device`; `auto` picks the first available in AUTO_ORDER."""
    if name == "auto":
        # On CPU the reference is fast enough for small models and is what the tests compare to.
        order = AUTO_ORDER if device.type == "cuda" else []
        for candidate in order + ["eager"]:
            if BACKENDS[candidate].available(device) is None:
                return BACKENDS[candidate]
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown attention backend '{name}'",
            where="model.attention.backend",
            fix=f"choose auto or one of: {', '.join(BACKENDS)}",
        )
    chosen = BACKENDS[name]
    reason = chosen.available(device)
    if reason is not None:
        raise ConfigError(
            f"attention backend '{name}' is not available on {device}: {reason}",
            where="model.attention.backend",
            fix="use model.attention.backend=auto to pick the fastest available one",
        )
    return chosen


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
