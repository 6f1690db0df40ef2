"""The loss components: plain cross-entropy against a hand-written log-softmax, and the fused
ones against plain cross-entropy (value and gradient, fp32 1e-5)."""

from __future__ import annotations

import pytest
import torch

from internlm import registry
from internlm.components.loss.chunked import ChunkedConfig, ChunkedCrossEntropy
from internlm.components.loss.cross_entropy import CrossEntropy
from internlm.errors import ConfigError


def problem(tokens=37, hidden=16, vocab=50, seed=0, ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[::ignore_every] = -100
    return h, w, labels


def value_and_grads(loss_fn, h, w, labels, scale=1.0):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss, count = loss_fn(h, w, labels)
    (loss * scale).backward()
    return loss.detach(), count, h.grad, w.grad


def test_cross_entropy_equals_hand_written_log_softmax_sum():
    h, w, labels = problem()
    loss, count = CrossEntropy()(h, w, labels)
    logits = h.double() @ w.double().t()
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    keep = labels != -100
    expected = -log_probs[keep].gather(1, labels[keep][:, None]).sum()
    assert count.item() == int(keep.sum()) == 29
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1, 8, 10, 37, 4096])
def test_chunked_equals_cross_entropy(chunk_tokens):
    h, w, labels = problem()
    expected = value_and_grads(CrossEntropy(), h, w, labels, scale=0.7)
    got = value_and_grads(ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=chunk_tokens, compile=False)), h, w, labels, scale=0.7)
    assert got[1].item() == expected[1].item()
    for e, g in zip((expected[0], expected[2], expected[3]), (got[0], got[2], got[3])):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_chunked_with_a_fully_ignored_chunk_and_no_labels():
    h, w, labels = problem(tokens=24)
    labels[:8] = -100  # the first chunk takes no loss at all
    expected = value_and_grads(CrossEntropy(), h, w, labels)
    got = value_and_grads(ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=8, compile=False)), h, w, labels)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-5)
    assert got[2][:8].abs().max() == 0
    none = torch.full_like(labels, -100)
    loss, count = ChunkedCrossEntropy(ChunkedConfig(compile=False))(h, w, none)
    assert loss.item() == 0 and count.item() == 0


def test_chunked_under_cpu_autocast_gives_fp32_parameter_grads():
    """Autocast (fp32 master weights, bf16 matmuls): gradients come back in the parameters' dtype
    and match plain cross-entropy under the same autocast within bf16 tolerance."""
    h, w, labels = problem(tokens=64, hidden=32, vocab=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = value_and_grads(CrossEntropy(), h, w, labels)
        got = value_and_grads(ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=16, compile=False)), h, w, labels)
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    torch.testing.assert_close(got[0], expected[0], rtol=1e-2, atol=1e-2)
    for e, g in zip(expected[2:], got[2:]):
        assert (g - e).norm() / e.norm() < 2e-2


def test_losses_are_registered_components():
    assert registry.get("loss", "cross_entropy").cls is CrossEntropy
    assert registry.get("loss", "chunked").cls is ChunkedCrossEntropy
    assert isinstance(registry.build(ChunkedConfig(chunk_tokens=4)), ChunkedCrossEntropy)


def test_liger_loss_says_why_it_cannot_run_here():
    from internlm.components.loss.liger import LigerConfig, LigerFusedCrossEntropy

    h, w, labels = problem()
    with pytest.raises(ConfigError, match="liger"):
        LigerFusedCrossEntropy(LigerConfig())(h, w, labels)  # not installed, or not a CUDA device
