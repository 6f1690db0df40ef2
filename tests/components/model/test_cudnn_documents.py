"""cuDNN's packed-document attention: the document-count buckets, the ops' shapes and autograd
(meta and fake tensors here; the kernel itself needs CUDA: the last test, and
bench/cudnn_documents.py, compare it with eager on the GPU)."""

from __future__ import annotations

import pytest
import torch

from internlm.batch import cu_seqlens_from_positions
from internlm.components.model import attention_backends as ab
from internlm.components.model import cudnn_documents as cd
from internlm.components.model import cudnn_ragged_graphs as graphs
from internlm.document_layout import DocumentLayout


def test_counts_pad_to_powers_of_two_from_the_smallest_bucket():
    assert [cd.padded_count(n) for n in (1, 2, 7, 8, 9, 16, 17, 100, 1024)] == [8, 8, 8, 8, 16, 16, 32, 128, 1024]
    for n in range(1, 600):
        bucket = cd.padded_count(n)
        assert bucket >= n and bucket & (bucket - 1) == 0 and (bucket < 2 * n or bucket == cd.MIN_BUCKET)


def test_padding_appends_empty_documents_only():
    cu = torch.tensor([0, 5, 9, 20])
    padded = cd.pad_cu_seqlens(cu)
    assert padded.dtype == torch.int32 and padded.tolist() == [0, 5, 9, 20] + [20] * 5
    lengths = padded.diff()
    assert lengths[:3].tolist() == [5, 4, 11] and not lengths[3:].any()
    exact = torch.arange(0, 81, 10)  # 8 documents: already a bucket
    assert cd.pad_cu_seqlens(exact).tolist() == exact.tolist()


def test_forward_and_backward_shapes_on_meta_tensors():
    q = torch.empty(64, 4, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    k = torch.empty(64, 4, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    v = torch.empty(64, 4, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    out = cd.document_attention(q, k, v, torch.empty(9, dtype=torch.int32, device="meta"), 32, 0.25)
    assert out.shape == (64, 4, 16) and out.dtype == torch.bfloat16
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_a_training_step_traces_to_the_two_opaque_ops():
    """Under tracing (what torch.compile sees) the kernel is one forward op and one backward op,
    and the aten cuDNN calls stay inside them."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def step(q, k, v, cu):
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = cd.document_attention(q, k, v, cu, 32, 0.25)
        return torch.autograd.grad(out.float().square().sum(), (q, k, v))

    args = [torch.randn(64, 2, 16, dtype=torch.bfloat16) for _ in range(3)] + [cd.pad_cu_seqlens(torch.tensor([0, 20, 64]))]
    graph = make_fx(step, tracing_mode="fake")(*args)
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert "internlm.cudnn_document_attention.default" in targets
    assert "internlm.cudnn_document_attention_backward.default" in targets
    assert not any("_cudnn_attention" in t for t in targets)


def test_prepare_pads_the_loaders_boundaries_and_skips_rows_of_one_document():
    positions = torch.tensor([list(range(10)) + list(range(22)), list(range(32))])
    layout = DocumentLayout.from_positions(positions, *cu_seqlens_from_positions(positions))
    ab._prepare_cudnn(layout)
    assert layout.cache["cudnn_cu_seqlens"].tolist() == [0, 10, 32, 64] + [64] * 5
    whole = torch.arange(32).expand(2, 32)
    layout = DocumentLayout.from_positions(whole, *cu_seqlens_from_positions(whole))
    ab._prepare_cudnn(layout)
    assert "cudnn_cu_seqlens" not in layout.cache  # SDPA's causal kernel takes these rows


def _per_document(q, k, v, cu_seqlens, max_len, scale):
    """Causal attention segment by segment: what the kernel must compute (empty segments skipped)."""
    bounds = cu_seqlens.tolist()
    pieces = [
        torch.nn.functional.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale
        ).transpose(0, 1)
        for a, b in zip(bounds[:-1], bounds[1:]) if b > a
    ]
    return torch.cat(pieces)


class _WrongQueryGradient(torch.autograd.Function):
    """Identity on q whose gradient is scaled: a kernel that is right forward, wrong backward."""

    @staticmethod
    def forward(ctx, q):
        return q.view_as(q)

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


def test_self_check_passes_the_right_function_and_names_a_wrong_gradient(monkeypatch):
    monkeypatch.setattr(cd, "document_attention", _per_document)
    assert cd.check_kernel(torch.device("cpu")) is None
    broken = lambda q, k, v, cu, max_len, scale: _per_document(_WrongQueryGradient.apply(q), k, v, cu, max_len, scale)  # noqa: E731
    monkeypatch.setattr(cd, "document_attention", broken)
    problem = cd.check_kernel(torch.device("cpu"))
    assert problem is not None and "dq off by" in problem
    assert "dk" not in problem and "dv" not in problem and "out off" not in problem


@pytest.mark.parametrize("width", [8, 1])  # q/k/v/out and dq/dk/dv, then the softmax statistics
def test_the_graphs_ragged_layout_addresses_each_documents_own_tokens(width):
    """What cuDNN reads for document b, head h, position s, feature d (its dims and strides, from
    the ragged offset) is token cu[b] + s of the flattened [T, H, width] tensor: checked by
    reading it that way with as_strided against plain slicing."""
    heads, max_len = 3, 16
    cu = cd.pad_cu_seqlens(torch.tensor([0, 5, 16, 23]))  # a full-length document, then empty ones
    flat = torch.arange(23 * heads * width).view(23, heads, width)
    meta = graphs._metadata(cu, heads, width)
    offsets = meta["rows"] if width > 1 else meta["stats_rows"]
    dims, strides = graphs._thd(cu.numel() - 1, heads, max_len, width)
    assert dims == [8, heads, max_len, width]
    for b, length in enumerate(meta["seq_len_q"].flatten().tolist()):
        read = flat.as_strided((heads, length, width), strides[1:], int(offsets.flatten()[b]))
        assert torch.equal(read, flat[int(cu[b]):int(cu[b + 1])].transpose(0, 1))
    assert meta["seq_len_q"].flatten().tolist() == [5, 11, 7, 0, 0, 0, 0, 0]
    assert meta["seq_len_q"].dtype == offsets.dtype == torch.int32 and offsets.shape == (9, 1, 1, 1)


def test_the_graphs_refuse_a_batch_their_int32_offsets_cannot_address():
    too_big = torch.empty(2**31 // (32 * 128) + 1, 32, 128, device="meta", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="int32"):
        graphs._check_size(too_big)
    graphs._check_size(torch.empty(16384, 32, 128, device="meta", dtype=torch.bfloat16))


def test_a_shape_cudnn_cannot_serve_is_named_with_the_way_out():
    class Unsupported:  # a graph whose support check fails, as cuDNN's does for a shape it has no kernel for
        def __getattr__(self, name):
            if name == "check_support":
                def fail():
                    raise RuntimeError("[cudnn_frontend] Error: No valid engine configs returned from heuristics.")
                return fail
            return lambda *args, **kwargs: None

    class Frontend:
        heur_mode = type("heur_mode", (), {"A": 0, "FALLBACK": 1})
        backend_version = staticmethod(lambda: 91900)

    g = graphs._Graph.__new__(graphs._Graph)
    g.graph, g.cudnn = Unsupported(), Frontend()
    with pytest.raises(RuntimeError) as info:
        g.build("the forward of 8 documents x 4 heads x 72 dims")
    message = str(info.value)
    assert "8 documents x 4 heads x 72 dims" in message and "No valid engine" in message
    assert "model.attention.backend=flex" in message


def test_without_the_frontend_package_the_ops_keep_torchs_own_path():
    if torch.cuda.is_available():
        pytest.skip("on CUDA machines the frontend may be installed")
    assert graphs.frontend() is None  # a CPU torch has no cuDNN: nothing is imported or built


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN's kernel needs a CUDA device")
def test_cudnn_backend_matches_eager_on_the_gpu():
    device = torch.device("cuda")
    reason = ab.BACKENDS["cudnn"].available(device)
    if reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    positions = torch.tensor([list(range(100)) + list(range(156)), list(range(30)) + list(range(200)) + list(range(26))])
    q, k, v, grad = (torch.randn(2, 256, 4, 64, generator=g) for _ in range(4))
    results = []
    for name, dtype in (("eager", torch.float32), ("cudnn", torch.bfloat16)):
        layout = DocumentLayout.from_positions(positions.to(device), *cu_seqlens_from_positions(positions))
        ins = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
        out = ab.BACKENDS[name].fn(*ins, layout, 0.125)
        out.backward(grad.to(device, dtype))
        results.append([out.float(), *(t.grad.float() for t in ins)])
    for got, expected in zip(results[1], results[0]):
        assert (got - expected).norm() / expected.norm() < 2e-2  # bf16 rounding, not another function
