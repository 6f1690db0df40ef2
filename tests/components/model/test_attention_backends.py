"""Every attention backend computes eager's function on random packed batches (CPU, fp32)."""

from __future__ import annotations

import math

import pytest
import torch

from internlm.components.model import attention_backends as ab
from internlm.document_layout import DocumentLayout
from internlm.errors import ConfigError

CPU = torch.device("cpu")


def random_positions(batch: int, seq: int, generator: torch.Generator, max_doc: int = 12) -> torch.Tensor:
    """Rows of documents with random lengths (1..max_doc); some rows start mid-document."""
    rows = []
    for _ in range(batch):
        start = int(torch.randint(0, 4, (1,), generator=generator))  # a document cut by the row start
        row = list(range(start, start + int(torch.randint(1, max_doc, (1,), generator=generator))))
        while len(row) < seq:
            row += list(range(int(torch.randint(1, max_doc, (1,), generator=generator))))
        rows.append(row[:seq])
    return torch.tensor(rows)


def qkv(batch, seq, heads, kv_heads, dim, generator):
    make = lambda h: torch.randn(batch, seq, h, dim, generator=generator, requires_grad=True)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads)


def run(fn, q, k, v, positions, scale):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, DocumentLayout.from_positions(positions), scale)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def test_eager_matches_per_document_softmax_by_hand():
    """The reference itself: each document attended separately with a causal mask."""
    g = torch.Generator().manual_seed(0)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0]])
    q, k, v = (t.detach() for t in qkv(1, 10, 2, 2, 4, g))
    out = ab.eager_attention(q, k, v, DocumentLayout.from_positions(positions), 0.5)
    for start, end in [(0, 3), (3, 5), (5, 9), (9, 10)]:
        qs, ks, vs = (t[0, start:end].transpose(0, 1) for t in (q, k, v))  # [heads, L, D]
        scores = qs @ ks.transpose(-1, -2) * 0.5
        scores = scores.masked_fill(torch.ones(end - start, end - start).triu(1).bool(), float("-inf"))
        expected = (scores.softmax(-1) @ vs).transpose(0, 1)
        torch.testing.assert_close(out[0, start:end], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in ab.BACKENDS if n != "eager"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_backend_matches_eager_forward_and_grad(name, heads, kv_heads):
    entry = ab.BACKENDS[name]
    reason = entry.available(CPU)
    if reason:
        pytest.skip(f"{name}: {reason}")
    if not entry.honours_documents:
        pytest.skip(f"{name} ignores document boundaries (tested separately)")
    g = torch.Generator().manual_seed(sum(map(ord, name)) + heads + kv_heads)
    for trial in range(3):
        positions = random_positions(2, 48, g)
        q, k, v = qkv(2, 48, heads, kv_heads, 8, g)
        scale = 1 / math.sqrt(8)
        expected = run(ab.eager_attention, q, k, v, positions, scale)
        got = run(entry.fn, q, k, v, positions, scale)
        for e, o in zip(expected, got):
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flex_document_mask_forward_on_cpu(kv_heads):
    """FlexAttention's forward runs on CPU (its backward does not): the block mask is right."""
    reason = ab.BACKENDS["flex"].available(torch.device("cpu"))
    if reason and "no backward on CPU" not in reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(3)
    positions = random_positions(2, 64, g)
    q, k, v = (t.detach() for t in qkv(2, 64, 4, kv_heads, 8, g))
    layout = DocumentLayout.from_positions(positions)
    got = ab.flex_attention(q, k, v, layout, 0.3)
    assert "flex_block_mask" in layout.cache
    expected = ab.eager_attention(q, k, v, DocumentLayout.from_positions(positions), 0.3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_layout_knows_one_document_per_row_only_from_the_loaders_boundaries():
    """The flag comes from cu_seqlens' length (a host-side shape), never from reading device ids."""
    from internlm.batch import cu_seqlens_from_positions

    whole = torch.arange(16).expand(3, 16)
    continued = torch.tensor([list(range(16)), list(range(40, 56)), list(range(7, 23))])  # pieces of long documents
    packed = torch.tensor([list(range(16)), list(range(9)) + list(range(7)), list(range(16))])
    for positions, expected in ((whole, True), (continued, True), (packed, False)):
        cu, longest = cu_seqlens_from_positions(positions)
        assert DocumentLayout.from_positions(positions, cu, longest).one_document_per_row is expected
    assert not DocumentLayout.from_positions(whole).one_document_per_row  # no boundaries given: not assumed
    cu, longest = cu_seqlens_from_positions(whole)  # a shape, not values: no device sync (meta has no values)
    assert DocumentLayout.from_positions(whole.to("meta"), cu.to("meta"), longest).one_document_per_row


@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flex_rows_of_one_document_take_the_causal_kernel(kv_heads):
    """One document per row: SDPA's causal kernel, with no block mask built, gives eager's answer
    (grouped-query heads included); a packed batch keeps flex's block mask."""
    from internlm.batch import cu_seqlens_from_positions

    reason = ab.BACKENDS["flex"].available(CPU)
    if reason and "no backward on CPU" not in reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(5)
    positions = torch.tensor([list(range(64)), list(range(100, 164))])
    q, k, v = (t.detach() for t in qkv(2, 64, 4, kv_heads, 8, g))
    layout = DocumentLayout.from_positions(positions, *cu_seqlens_from_positions(positions))
    ab.BACKENDS["flex"].prepare(layout)  # what the compiled block's pre-forward hook does
    got = ab.flex_attention(q, k, v, layout, 0.3)
    assert "flex_block_mask" not in layout.cache
    expected = ab.eager_attention(q, k, v, DocumentLayout.from_positions(positions), 0.3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    packed = torch.tensor([list(range(30)) + list(range(34)), list(range(64))])
    layout = DocumentLayout.from_positions(packed, *cu_seqlens_from_positions(packed))
    ab.BACKENDS["flex"].prepare(layout)
    got = ab.flex_attention(q, k, v, layout, 0.3)
    assert "flex_block_mask" in layout.cache
    torch.testing.assert_close(got, ab.eager_attention(q, k, v, DocumentLayout.from_positions(packed), 0.3), rtol=1e-5, atol=1e-5)


def test_sdpa_causal_equals_eager_only_with_one_document_per_row():
    g = torch.Generator().manual_seed(4)
    q, k, v = (t.detach() for t in qkv(2, 32, 4, 2, 8, g))
    one_doc = torch.arange(32).expand(2, 32)
    expected = ab.eager_attention(q, k, v, DocumentLayout.from_positions(one_doc), 0.35)
    got = ab.sdpa_causal_attention(q, k, v, DocumentLayout.from_positions(one_doc), 0.35)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    packed = torch.tensor([list(range(10)) + list(range(22))] * 2)
    masked = ab.eager_attention(q, k, v, DocumentLayout.from_positions(packed), 0.35)
    across = ab.sdpa_causal_attention(q, k, v, DocumentLayout.from_positions(packed), 0.35)
    torch.testing.assert_close(across[:, :10], masked[:, :10], rtol=1e-5, atol=1e-5)  # first document: same
    assert (across[:, 10:] - masked[:, 10:]).abs().max() > 1e-2  # later ones see the earlier document


def test_auto_is_eager_on_cpu():
    assert ab.resolve("auto", CPU).name == "eager"


def test_auto_never_picks_a_backend_that_ignores_documents(monkeypatch):
    monkeypatch.setattr(ab, "AUTO_ORDER", ["sdpa_causal", "sdpa"])
    assert ab.choose("auto", "cuda", {}) == "sdpa"  # a CUDA machine on which every backend runs


def test_auto_order_lists_only_document_aware_backends():
    assert all(ab.BACKENDS[name].honours_documents for name in ab.AUTO_ORDER)


@pytest.mark.parametrize("name", ["varlen", "flash_attn", "flex", "cudnn"])
def test_unavailable_backend_says_why(name):
    reason = ab.BACKENDS[name].available(CPU)
    assert reason  # none of these runs a backward on CPU
    with pytest.raises(ConfigError) as err:
        ab.resolve(name, CPU)
    assert reason in str(err.value) and "model.attention.backend" in str(err.value)


def test_unknown_backend_lists_choices():
    with pytest.raises(ConfigError, match="choose auto or one of: eager, sdpa"):
        ab.resolve("flashy", CPU)


def test_prepare_fills_the_layout_cache_once():
    positions = random_positions(2, 16, torch.Generator().manual_seed(5))
    layout = DocumentLayout.from_positions(positions)
    ab.prepare("sdpa", layout)
    mask = layout.cache["dense"]
    ab.prepare("sdpa", layout)
    assert layout.cache["dense"] is mask
    ab._prepare_varlen(layout)  # cu_seqlens over the flattened batch, one entry per document start
    cu = layout.cache["varlen_cu_seqlens"]
    starts = (positions.reshape(-1) == 0).clone()
    starts[:: positions.shape[1]] = True
    assert cu.dtype == torch.int32 and cu.tolist() == torch.nonzero(starts).flatten().tolist() + [positions.numel()]


def test_describe_reports_every_backend():
    status = ab.describe(CPU)
    assert set(status) == set(ab.BACKENDS)
    assert status["eager"] == "available" and "ignores document boundaries" in status["sdpa_causal"]
