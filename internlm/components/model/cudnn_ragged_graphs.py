"""cuDNN's fused attention over packed documents, through NVIDIA's cudnn-frontend Python API
(the optional `nvidia-cudnn-frontend` package), which builds cuDNN graphs we cache ourselves,
instead of torch's wrapper (torch 2.11's ragged path builds a plan on every call, 36-39 ms, and
sizes the backward's dQ accumulator wrongly, pytorch/pytorch#186142).

Layout, as in cudnn_documents.py: q, k, v and out are [T, H, D] (the batch flattened); `cu_seqlens`
[N + 1] int32 says where documents start (N padded to a bucket with empty documents). To cuDNN
each document is one "batch" of an [N, H, max_len, D] tensor whose batch stride is replaced by a
ragged offset (cu_seqlens x H x D elements). The softmax statistics are token-major [T, H, 1],
ragged the same way (cu_seqlens x H): with them the backward's accumulators can be sized by the
T tokens (`max_total_seq_len`) instead of N x max_len. The causal mask is top-left aligned inside
each document and the padding mask ends it at its length, so empty documents do no work.

A graph is keyed on (documents, heads, head dim, longest document, tokens, scale, dtype, device):
a run whose document counts are bucketed builds a handful, each once.
"""

from __future__ import annotations

import functools
import importlib

import torch

INT32_LIMIT = 2**31 - 1  # cuDNN's ragged offsets are int32 element counts here


@functools.cache
def frontend():
    """The `cudnn` module of nvidia-cudnn-frontend, or None where it is missing or cannot load
    cuDNN (CPU builds of torch)."""
    if not torch.backends.cudnn.is_available():
        return None
    try:
        return importlib.import_module("cudnn")
    except Exception:  # ImportError, or the library failing to find its cuDNN
        return None


@functools.cache
def _handle(device_index: int):
    with torch.cuda.device(device_index):
        return frontend().create_handle()


def _bound_handle(device: torch.device):
    """The device's cuDNN handle on torch's current stream, so the kernels queue behind the ops
    that produced their inputs."""
    handle = _handle(device.index)
    frontend().set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    return handle


def _thd(documents: int, heads: int, max_len: int, width: int) -> tuple[list[int], list[int]]:
    """Dims and strides of [documents, heads, max_len, width] stored token-major as [T, heads, width]."""
    return [documents, heads, max_len, width], [max_len * heads * width, width, heads * width, 1]


class _Graph:
    """One built cuDNN graph and its tensors by name (the names the variant pack is given in)."""

    def __init__(self, cudnn, dtype: torch.dtype, device: torch.device, documents: int):
        io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}
        if dtype not in io:
            raise TypeError(f"cuDNN's fused attention takes bf16 or fp16 inputs, got {dtype}")
        self.cudnn, self.io, self.documents = cudnn, io[dtype], documents
        self.graph = cudnn.pygraph(io_data_type=self.io, intermediate_data_type=cudnn.data_type.FLOAT,
                                   compute_data_type=cudnn.data_type.FLOAT, handle=_handle(device.index))
        self.tensors: dict = {}

    def _offset(self, name: str):
        self.tensors[f"{name}_offset"] = self.graph.tensor(
            name=f"{name}_offset", dim=[self.documents + 1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=self.cudnn.data_type.INT32)
        return self.tensors[f"{name}_offset"]

    def ragged_input(self, name: str, shape, dtype=None):
        dim, stride = shape
        self.tensors[name] = self.graph.tensor(name=name, dim=dim, stride=stride, data_type=dtype or self.io,
                                               ragged_offset=self._offset(name))
        return self.tensors[name]

    def ragged_output(self, name: str, tensor, shape, dtype=None) -> None:
        dim, stride = shape
        tensor.set_output(True).set_dim(dim).set_stride(stride).set_ragged_offset(self._offset(name))
        if dtype is not None:
            tensor.set_data_type(dtype)
        self.tensors[name] = tensor

    def lengths(self, name: str):
        self.tensors[name] = self.graph.tensor(name=name, dim=[self.documents, 1, 1, 1], stride=[1, 1, 1, 1],
                                               data_type=self.cudnn.data_type.INT32)
        return self.tensors[name]

    def mask(self) -> dict:
        """Causal inside each document, ended at its length."""
        return dict(use_padding_mask=True, seq_len_q=self.lengths("seq_len_q"), seq_len_kv=self.lengths("seq_len_kv"),
                    diagonal_alignment=self.cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_right_bound=0)

    def build(self, what: str) -> "_Graph":
        graph, cudnn = self.graph, self.cudnn
        try:
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            graph.check_support()
            graph.build_plans()
        except Exception as exc:  # cudnnGraphNotSupportedError and friends: say which shape, and the way out
            raise RuntimeError(f"cuDNN (backend {cudnn.backend_version()}) has no packed-document attention kernel for "
                               f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                               "set model.attention.backend=flex") from exc
        self.workspace = graph.get_workspace_size()
        return self

    def execute(self, buffers: dict[str, torch.Tensor], device: torch.device) -> None:
        workspace = torch.empty(self.workspace, dtype=torch.uint8, device=device)
        pack = {self.tensors[name]: buffer for name, buffer in buffers.items()}
        self.graph.execute(pack, workspace, handle=_bound_handle(device))


def _shape_words(documents: int, heads: int, head_dim: int, dtype: torch.dtype) -> str:
    return f"{documents} documents x {heads} heads x {head_dim} dims in {dtype}"


@functools.cache
def forward_graph(documents, heads, head_dim, max_len, scale, dtype, device) -> _Graph:
    g = _Graph(frontend(), dtype, device, documents)
    shape, stats_shape = _thd(documents, heads, max_len, head_dim), _thd(documents, heads, max_len, 1)
    q, k, v = (g.ragged_input(name, shape) for name in ("q", "k", "v"))
    out, stats = g.graph.sdpa(name="sdpa", q=q, k=k, v=v, generate_stats=True, attn_scale=scale, **g.mask())
    g.ragged_output("o", out, shape)
    g.ragged_output("stats", stats, stats_shape, g.cudnn.data_type.FLOAT)
    return g.build(f"the forward of {_shape_words(documents, heads, head_dim, dtype)}")


@functools.cache
def backward_graph(documents, heads, head_dim, max_len, tokens, scale, dtype, device, deterministic: bool) -> _Graph:
    """`deterministic`: cuDNN's repeatable backward (no atomic accumulation of dq), asked for by
    torch.use_deterministic_algorithms(True); the default one is not bitwise repeatable."""
    g = _Graph(frontend(), dtype, device, documents)
    shape, stats_shape = _thd(documents, heads, max_len, head_dim), _thd(documents, heads, max_len, 1)
    q, k, v, o, d_o = (g.ragged_input(name, shape) for name in ("q", "k", "v", "o", "d_o"))
    stats = g.ragged_input("stats", stats_shape, g.cudnn.data_type.FLOAT)
    grads = g.graph.sdpa_backward(name="sdpa_backward", q=q, k=k, v=v, o=o, dO=d_o, stats=stats, attn_scale=scale,
                                  max_total_seq_len_q=tokens, max_total_seq_len_kv=tokens,
                                  use_deterministic_algorithm=deterministic, **g.mask())
    for name, grad in zip(("dq", "dk", "dv"), grads):
        g.ragged_output(name, grad, shape)
    return g.build(f"the backward of {_shape_words(documents, heads, head_dim, dtype)}")


def _metadata(cu_seqlens: torch.Tensor, heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """Lengths and element offsets of each document, as the graphs read them (int32, on device)."""
    cu = cu_seqlens.to(torch.int32)
    lengths = (cu[1:] - cu[:-1]).view(-1, 1, 1, 1)
    return {"seq_len_q": lengths, "seq_len_kv": lengths,
            "rows": (cu * (heads * head_dim)).view(-1, 1, 1, 1), "stats_rows": (cu * heads).view(-1, 1, 1, 1)}


def _lengths_and_offsets(meta: dict[str, torch.Tensor], ragged: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The variant-pack entries every graph shares: both length columns, the ragged offset of each
    [T, H, D] tensor in `ragged`, and the statistics' offset."""
    return {"seq_len_q": meta["seq_len_q"], "seq_len_kv": meta["seq_len_kv"], "stats_offset": meta["stats_rows"],
            **{f"{name}_offset": meta["rows"] for name in ragged}}


def _check_size(q: torch.Tensor) -> None:
    if q.numel() > INT32_LIMIT:
        raise ValueError(f"cuDNN's ragged offsets are int32: {tuple(q.shape)} holds more than 2**31 elements; "
                         "use a smaller batch per GPU or another attention backend")


def forward(q, k, v, cu_seqlens, max_len: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """out [T, H, D] and the log-sum-exp [T, H, 1] fp32 of causal attention within each document."""
    _check_size(q)
    tokens, heads, head_dim = q.shape
    g = forward_graph(cu_seqlens.numel() - 1, heads, head_dim, max_len, scale, q.dtype, q.device)
    meta = _metadata(cu_seqlens, heads, head_dim)
    out = torch.empty_like(q)
    stats = q.new_empty((tokens, heads, 1), dtype=torch.float32)
    g.execute({"q": q, "k": k, "v": v, "o": out, "stats": stats, **_lengths_and_offsets(meta, ("q", "k", "v", "o"))},
              q.device)
    return out, stats


def backward(grad, q, k, v, out, stats, cu_seqlens, max_len: int, scale: float):
    """dq, dk, dv [T, H, D] for forward's result `out` and statistics `stats`."""
    tokens, heads, head_dim = q.shape
    g = backward_graph(cu_seqlens.numel() - 1, heads, head_dim, max_len, tokens, scale, q.dtype, q.device,
                       torch.are_deterministic_algorithms_enabled())
    meta = _metadata(cu_seqlens, heads, head_dim)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    tensors = {"q": q, "k": k, "v": v, "o": out, "d_o": grad, "dq": dq, "dk": dk, "dv": dv}
    g.execute({**tensors, "stats": stats, **_lengths_and_offsets(meta, tuple(tensors))}, q.device)
    return dq, dk, dv
