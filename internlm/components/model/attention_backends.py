"""Attention kernels for packed documents, interchangeable by config (`model.attention.backend`).

Every backend computes the same function: causal attention that never crosses a document
boundary (DocumentLayout). `eager` is the plain reference used by the tests; the others are
fast paths that must match it. `auto` picks the fastest backend available on the device.

A backend is a function ``(q, k, v, layout, scale) -> out`` with q [B, S, Hq, D] and k, v
[B, S, Hkv, D] (grouped-query attention: Hq is a multiple of Hkv), returning [B, S, Hq, D].

Backends that need per-batch metadata (a block mask, cu_seqlens) build it in ``prepare(layout)``
and keep it in ``layout.cache``, so every layer shares one copy. `prepare` runs eagerly: the
backend calls it itself when the cache is empty, and `internlm.runtime.torch_compile` calls it
before each compiled block, so compiled graphs only read the cache (no recompiles per batch).

| backend     | honours documents | runs on | kernel |
|-------------|-------------------|---------|--------|
| eager       | yes | any  | fp32 matmul + masked softmax (reference) |
| sdpa        | yes | any  | SDPA with a dense [B, 1, S, S] mask (memory-efficient kernel) |
| flex        | yes | CUDA (forward also on CPU, for tests) | compiled FlexAttention, block-causal document mask; rows of one document each: SDPA causal (cuDNN) |
| cudnn       | yes | CUDA, where its self-check passes (torch 2.11: with nvidia-cudnn-frontend) | cuDNN's fused attention over the flattened batch, one segment per document (cudnn_documents.py) |
| varlen      | yes | CUDA | torch.nn.attention.varlen (flash varlen inside torch) |
| flash_attn  | yes | CUDA | flash_attn_varlen_func, when the flash-attn package imports |
| sdpa_causal | NO  | any  | SDPA is_causal (cuDNN first): attends across documents; for benchmarks only |
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from internlm.batch import cu_seqlens_on
from internlm.components.model import cudnn_documents, document_block_mask
from internlm.document_layout import DocumentLayout
from internlm.errors import ConfigError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DocumentLayout, float], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    available: Callable[[torch.device], str | None]  # None if usable, else the reason it is not
    summary: str
    honours_documents: bool = True  # False: attends across document boundaries; never picked by auto
    prepare: Callable[[DocumentLayout], None] | None = None  # fills layout.cache once per forward


BACKENDS: dict[str, Backend] = {}

# Fastest first: `auto` takes the first one available. Measured on one H200, torch 2.11
# (bench/RESULTS.md, kernel table; batch 2 x 4096, 32 x 128 heads, bf16, forward + backward):
# packed documents flex 1.84 ms, varlen 2.10, sdpa 6.49; one document per row flex 3.23,
# varlen 3.73. `cudnn` leads where it is available, i.e. where its self-check passes, which on
# torch 2.11 means through the nvidia-cudnn-frontend package (torch's own ragged path is refused):
# at batch 4 x 4096 on the program's layouts (8-15 documents) its forward + backward is 1.16-1.38x
# flex's and the program +2.0% (bench/cudnn_documents.py, speed_call.py, 2026-12-03). On rows of equal
# short documents (4-64 per row) its kernels are 0.83-1.08x flex's, but flex also builds a 2.6-3.2 ms
# block mask per step: at worst ~4 ms a step slower, so no per-batch switch. flash_attn could not be
# measured (no package): its varlen kernel is the same FlashAttention-2 family as torch's varlen, so
# it sits after it. Only backends that honour document boundaries may appear here. On CPU `auto` is
# `eager`.
AUTO_ORDER: list[str] = ["cudnn", "flex", "varlen", "flash_attn", "sdpa"]


def backend(
    name: str,
    summary: str,
    available: Callable[[torch.device], str | None] = lambda d: None,
    honours_documents: bool = True,
    prepare: Callable[[DocumentLayout], None] | None = None,
):
    def decorate(fn: AttentionFn) -> AttentionFn:
        BACKENDS[name] = Backend(name, fn, available, summary, honours_documents, prepare)
        return fn

    return decorate


def _import_or_reason(module: str) -> tuple[Any, str | None]:
    """Imported by the backend's availability probe, not when the components are registered
    (FlexAttention pulls in torch._dynamo, 1.5 s that a typo error or `task=plan` never needs).
    Every use of a backend goes through its probe first (the program asks, and `resolve` asks
    eagerly before any kernel runs), so kernels read plain module globals, also under compile."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or a broken binary extension
        return None, f"cannot import {module} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _needs_cuda(device: torch.device) -> str | None:
    return None if device.type == "cuda" else f"needs a CUDA device, got '{device.type}'"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


def _same_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Fused kernels need one dtype. Under autocast, rotary's fp32 cos/sin can leave q and k in
    fp32 while v is bf16 (SDPA is cast by autocast itself; these kernels are not): use autocast's."""
    device_type = q.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else v.dtype
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _prepare_dense(layout: DocumentLayout) -> None:
    layout.dense_mask()


# ---------------------------------------------------------------------------------------------
# Reference and dense-mask paths (any device)


@backend("eager", "matmul + masked softmax in fp32: the reference", prepare=_prepare_dense)
def eager_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), _repeat_kv(k, groups).transpose(1, 2), _repeat_kv(v, groups).transpose(1, 2)
    compute = torch.promote_types(q.dtype, torch.float32)  # at least fp32, fp64 stays fp64
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~layout.dense_mask(), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.to(compute)).to(q.dtype).transpose(1, 2)


@backend("sdpa", "torch SDPA with a dense document mask (any device)", prepare=_prepare_dense)
def sdpa_dense_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), _repeat_kv(k, groups).transpose(1, 2), _repeat_kv(v, groups).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense_mask(), scale=scale)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# FlexAttention: a block-causal document mask; blocks of 128 x 128 that no document spans are skipped.

_flex_module: Any = None
_compiled_flex: Callable | None = None


def _flex_available(device: torch.device) -> str | None:
    global _flex_module
    _flex_module, _flex_missing = _import_or_reason("torch.nn.attention.flex_attention")
    if _flex_missing:
        return _flex_missing
    if device.type != "cuda":
        return "FlexAttention has no backward on CPU (its forward runs there, which the tests use)"
    return None


def _flex_kernel(device: torch.device) -> Callable:
    """Compiled flex_attention on CUDA (the eager one materialises the scores); eager elsewhere."""
    global _compiled_flex
    if _flex_module is None:
        _flex_available(device)
    if device.type != "cuda":
        return _flex_module.flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(_flex_module.flex_attention, dynamic=False)
    return _compiled_flex


def _document_mask_mod(document_ids: torch.Tensor) -> Callable:
    def same_document_causal(b, h, q_idx, kv_idx):
        return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (q_idx >= kv_idx)

    return same_document_causal


def _prepare_flex(layout: DocumentLayout) -> None:
    if "flex_block_mask" in layout.cache or layout.one_document_per_row:  # no mask: flex_attention takes cuDNN
        return
    ids = layout.document_ids
    if _flex_module is None:
        _flex_available(ids.device)
    batch, seq = ids.shape
    if document_block_mask.builds(seq):  # from the tiles' document ids, not S x S mask calls
        layout.cache["flex_block_mask"] = document_block_mask.document_block_mask(
            ids, _flex_module.BlockMask, _document_mask_mod(ids)
        )
        return
    kwargs = {}
    if ids.is_cuda and "_compile" in inspect.signature(_flex_module.create_block_mask).parameters:
        kwargs["_compile"] = True  # builds the mask without materialising S x S booleans
    layout.cache["flex_block_mask"] = _flex_module.create_block_mask(
        _document_mask_mod(ids), batch, None, seq, seq, device=ids.device, **kwargs
    )


@backend("flex", "compiled FlexAttention with a block-causal document mask (CUDA)", _flex_available, prepare=_prepare_flex)
def flex_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    if layout.one_document_per_row:
        # Plain causal attention per row: SDPA's causal kernel (cuDNN on Hopper) computes it 1.5x
        # faster than flex (2.14 vs 3.23 ms fwd+bwd per layer at batch 2 x 4096; +2.9% a 16-layer
        # step, bench/RESULTS.md). cuDNN takes equal head counts: grouped k/v are repeated (a copy
        # per layer, ~1/10 of what the kernel saves at 7B shapes, counted not measured).
        groups = q.shape[2] // k.shape[2]
        return sdpa_causal_attention(q, _repeat_kv(k, groups), _repeat_kv(v, groups), layout, scale)
    _prepare_flex(layout)
    q, k, v = _same_dtype(q, k, v)
    kernel = _flex_kernel(q.device)
    out = kernel(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=layout.cache["flex_block_mask"],
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Variable-length kernels over the flattened batch: one "sequence" per document.


def _layout_cu_seqlens(layout: DocumentLayout, key: str, shape: Callable[[torch.Tensor], torch.Tensor] = lambda cu: cu) -> None:
    """layout.cache[key]: the documents' cu_seqlens (int32, on the ids' device), passed through
    `shape` (a backend's padding), marked dynamic in their length."""
    if key in layout.cache:
        return
    if layout.cu_seqlens is not None:  # precomputed by the loader on the host: no device sync
        cu = layout.cu_seqlens.to(device=layout.position_ids.device, dtype=torch.int32, non_blocking=True)
    else:
        cu = cu_seqlens_on(layout.position_ids)
    cu = shape(cu)
    # The number of documents changes every batch: tell torch.compile up front, so the first
    # batch compiles a graph for any count instead of one per count.
    torch._dynamo.maybe_mark_dynamic(cu, 0)
    layout.cache[key] = cu


def _prepare_varlen(layout: DocumentLayout) -> None:
    _layout_cu_seqlens(layout, "varlen_cu_seqlens")


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], x.shape[2], x.shape[3])


_varlen_module: Any = None
_VARLEN_PARAMS: set[str] = set()


def _varlen_available(device: torch.device) -> str | None:
    global _varlen_module, _VARLEN_PARAMS
    _varlen_module, _varlen_missing = _import_or_reason("torch.nn.attention.varlen")
    _VARLEN_PARAMS = set(inspect.signature(_varlen_module.varlen_attn).parameters) if _varlen_module else set()
    if _varlen_missing:
        return f"this torch ({torch.__version__}) has no torch.nn.attention.varlen: {_varlen_missing}"
    if device.type != "cuda":
        return "torch.nn.attention.varlen is CUDA-only"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "torch.nn.attention.varlen needs compute capability 8.0 or newer"
    return None


@backend("varlen", "torch.nn.attention.varlen: flash varlen kernel inside torch (CUDA)", _varlen_available, prepare=_prepare_varlen)
def varlen_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    _prepare_varlen(layout)
    q, k, v = _same_dtype(q, k, v)
    cu = layout.cache["varlen_cu_seqlens"]
    batch, seq, heads, dim = q.shape
    groups = heads // k.shape[2]
    kwargs: dict[str, Any] = {}
    # The signature moved between torch releases: causal was a flag, later a window (-1, 0).
    if "is_causal" in _VARLEN_PARAMS:
        kwargs["is_causal"] = True
    else:
        kwargs["window_size"] = (-1, 0)
    if "scale" in _VARLEN_PARAMS:
        kwargs["scale"] = scale
    elif not math.isclose(scale, 1.0 / math.sqrt(dim)):
        q = q * (scale * math.sqrt(dim))  # this torch always scales by 1/sqrt(D)
    if groups > 1:
        if "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        else:
            k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    # max_seqlen only sizes the launch grid: the row length bounds every document and is a
    # constant, so compiled graphs do not depend on the batch's longest document.
    out = _varlen_module.varlen_attn(_flatten(q), _flatten(k), _flatten(v), cu, cu, seq, seq, **kwargs)
    return out.view(batch, seq, heads, dim)


_flash_attn_module: Any = None


def _flash_attn_available(device: torch.device) -> str | None:
    global _flash_attn_module
    _flash_attn_module, _flash_attn_missing = _import_or_reason("flash_attn")
    if _flash_attn_missing:
        return f"the flash-attn package is not installed: {_flash_attn_missing}"
    return _needs_cuda(device)


@backend("flash_attn", "flash_attn_varlen_func from the flash-attn package (CUDA)", _flash_attn_available, prepare=_prepare_varlen)
def flash_attn_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    _prepare_varlen(layout)
    q, k, v = _same_dtype(q, k, v)
    cu = layout.cache["varlen_cu_seqlens"]
    batch, seq, heads, dim = q.shape
    out = _flash_attn_module.flash_attn_varlen_func(
        _flatten(q), _flatten(k), _flatten(v), cu, cu, seq, seq, softmax_scale=scale, causal=True
    )  # grouped-query attention is native: k, v keep their Hkv heads
    return out.view(batch, seq, heads, dim)


# ---------------------------------------------------------------------------------------------
# cuDNN over the flattened batch: the kernel SDPA's causal path uses, told where documents start.


def _cudnn_available(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "cuDNN attention is CUDA-only"
    if not torch.backends.cudnn.is_available():
        return f"this torch ({torch.__version__}) has no cuDNN"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "cuDNN attention needs compute capability 8.0 or newer"
    try:  # ragged (THD) inputs depend on the torch and cuDNN builds: ask the kernel itself, and check its answer
        return cudnn_documents.self_check(device)
    except Exception as exc:  # RuntimeError from cuDNN or a torch without the op
        return f"cuDNN rejected packed-document attention here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _prepare_cudnn(layout: DocumentLayout) -> None:
    if not layout.one_document_per_row:  # those rows take SDPA's causal kernel: nothing to prepare
        _layout_cu_seqlens(layout, "cudnn_cu_seqlens", cudnn_documents.pad_cu_seqlens)


@backend("cudnn", "cuDNN's fused attention, one segment per packed document (CUDA)", _cudnn_available, prepare=_prepare_cudnn)
def cudnn_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    q, k, v = _same_dtype(q, k, v)
    if q.dtype not in (torch.bfloat16, torch.float16):  # cuDNN's kernel is 16-bit only; fp32 runs are not the fast path
        return flex_attention(q, k, v, layout, scale)
    groups = q.shape[2] // k.shape[2]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)  # ragged cuDNN takes equal head counts
    if layout.one_document_per_row:
        return sdpa_causal_attention(q, k, v, layout, scale)
    _prepare_cudnn(layout)
    batch, seq, heads, dim = q.shape
    # the row length bounds every document: a constant plan key, unlike the batch's longest document
    out = cudnn_documents.document_attention(
        _flatten(q), _flatten(k), _flatten(v), layout.cache["cudnn_cu_seqlens"], seq, scale
    )
    return out.view(batch, seq, heads, dim)


# ---------------------------------------------------------------------------------------------
# Plain causal SDPA: ignores document boundaries. It exists to compare kernels and frameworks
# (torchtitan trains causal across documents this way); `auto` never picks it.

_CAUSAL_PRIORITY = ["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]


@backend(
    "sdpa_causal",
    "SDPA is_causal, cuDNN kernel first: IGNORES document boundaries (benchmarks only)",
    honours_documents=False,
)
def sdpa_causal_attention(q, k, v, layout: DocumentLayout, scale: float) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [getattr(SDPBackend, name) for name in _CAUSAL_PRIORITY]
    with sdpa_kernel(order, set_priority=True):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            scale=scale,
            enable_gqa=q.shape[2] != k.shape[2],
        )
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------

_RESOLVED: dict[tuple[str, str], Backend] = {}


def resolve(name: str, device: torch.device) -> Backend:
    """The backend to use for `name` on `device`; `auto` picks the first available in AUTO_ORDER.

    Cached per (name, device type) so that the per-layer call is a dict lookup.
    """
    key = (name, device.type)
    found = _RESOLVED.get(key)
    if found is None:
        found = _resolve_uncached(name, device)
        _RESOLVED[key] = found
    return found


def availability(device: torch.device) -> dict[str, str | None]:
    """Probe: backend name -> None if it runs on `device`, else why not (the program asks once
    and hands the answer to compile, which then decides without touching a device)."""
    return {name: _reason(chosen, device) for name, chosen in BACKENDS.items()}


def _reason(chosen: Backend, device: torch.device) -> str | None:
    try:
        return chosen.available(device)
    except Exception as exc:  # a probe that cannot even ask (e.g. CUDA queries on a CPU build)
        return f"{type(exc).__name__}: {exc}"


def choose(name: str, device_type: str, unavailable: dict[str, str | None]) -> str:
    """The backend `name` means on a device of `device_type` whose probed `availability` is
    `unavailable`: `auto` takes the first usable one of AUTO_ORDER; a named one must be usable."""
    if name == "auto":
        # On CPU the reference is fast enough for small models and is what the tests compare to.
        order = AUTO_ORDER if device_type == "cuda" else []
        for candidate in order + ["eager"]:
            if BACKENDS[candidate].honours_documents and unavailable.get(candidate) is None:
                return candidate
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown attention backend '{name}'",
            where="model.attention.backend",
            fix=f"choose auto or one of: {', '.join(BACKENDS)}",
        )
    reason = unavailable.get(name)
    if reason is not None:
        raise ConfigError(
            f"attention backend '{name}' is not available on {device_type}: {reason}",
            where="model.attention.backend",
            fix="use model.attention.backend=auto to pick the fastest available one",
        )
    return name


def _resolve_uncached(name: str, device: torch.device) -> Backend:
    return BACKENDS[choose(name, device.type, availability(device))]


def prepare(name: str, layout: DocumentLayout) -> None:
    """Build the backend's per-batch metadata into layout.cache (eagerly, outside compiled code)."""
    chosen = resolve(name, layout.position_ids.device)
    if chosen.prepare is not None:
        chosen.prepare(layout)


def describe(device: torch.device) -> dict[str, str]:
    """Every backend's status on `device`: 'available' or the reason it is not (for logs and plans)."""
    out = {}
    for name, entry in BACKENDS.items():
        reason = entry.available(device)
        status = "available" if reason is None else f"unavailable: {reason}"
        if not entry.honours_documents:
            status += " (ignores document boundaries; never picked by auto)"
        out[name] = status
    return out


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
