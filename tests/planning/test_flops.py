"""FLOPs accounting against hand-counted InternLM-7B numbers and the formulas' own identities."""

from __future__ import annotations

import pytest

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import TransformerConfig
from internlm.planning import flops

INTERNLM_7B = TransformerConfig(
    vocab_size=103168, hidden_size=4096, num_layers=32, attention=AttentionConfig(num_heads=32), mlp=MLPConfig(11008)
)
TOTAL_7B = 7_321_948_160  # DESIGN.md section 3


def test_matmul_parameters_are_the_7b_minus_embedding_biases_and_norms():
    embedding = 103168 * 4096
    biases = 32 * 4 * 4096  # q, k, v, o
    norms = (2 * 32 + 1) * 4096
    assert flops.matmul_parameters(INTERNLM_7B) == TOTAL_7B - embedding - biases - norms == 6_898_581_504


def test_flops_per_token_causal_and_full():
    six_n = 6 * 6_898_581_504
    assert flops.flops_per_token(INTERNLM_7B, 4096) == six_n + 12 * 32 * 4096 * 2048  # 44.6 GFLOP
    # torchtitan's convention (full s^2 attention): DESIGN.md's "~47 GFLOP per token"
    full = flops.flops_per_token(INTERNLM_7B, 4096, causal=False)
    assert full == six_n + 12 * 32 * 4096 * 4096 and 47e9 < full < 48e9


def test_mean_attended_keys_of_packed_documents():
    assert flops.mean_attended_keys([1, 2, 3]) == pytest.approx((1 + 3 + 6) / 6)
    assert flops.mean_attended_keys([4096]) == pytest.approx(4097 / 2)  # one causal row
    assert flops.mean_attended_keys([]) == 0.0
    with_docs = flops.flops_per_token(INTERNLM_7B, 4096, mean_context=flops.mean_attended_keys([1024] * 4))
    assert flops.flops_per_token(INTERNLM_7B, 4096, causal=False) > flops.flops_per_token(INTERNLM_7B, 4096) > with_docs


def test_document_lengths_from_positions():
    assert flops.document_lengths_from_positions([[5, 6, 0, 1, 2, 0], [0, 1, 2, 3]]) == [2, 3, 1, 4]


def test_internlm_formula_without_checkpointing_is_six_n_plus_full_attention():
    """InternLM's 3 x ((8 + 4r) h^2 + 4 s h) L + 6 h V counts exactly the matmuls (6N) and full
    s^2 attention when r = 1.5 ffn / h, for multi-head attention."""
    assert flops.internlm_flops_per_token(INTERNLM_7B, 2048, checkpointing=False) == pytest.approx(
        flops.flops_per_token(INTERNLM_7B, 2048, causal=False)
    )


def test_internlm_formula_counts_checkpointing_as_a_fourth_pass_over_the_layers():
    plain = flops.internlm_flops_per_token(INTERNLM_7B, 2048, checkpointing=False)
    ckpt = flops.internlm_flops_per_token(INTERNLM_7B, 2048, checkpointing=True)
    head = 6 * 4096 * 103168
    assert ckpt - head == pytest.approx((plain - head) * 4 / 3)
    assert flops.internlm_tflops(INTERNLM_7B, 2048, 4078, checkpointing=True) == pytest.approx(ckpt * 4078 / 1e12)


@pytest.mark.parametrize(
    "name,peak",
    [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H20", 148e12), ("NVIDIA A100-SXM4-80GB", 312e12)],
)
def test_peak_flops_by_device_name(name, peak):
    assert flops.peak_flops(name) == peak


def test_peak_flops_override_and_unknown():
    assert flops.peak_flops("NVIDIA H200", override_tflops=500) == 500e12
    assert flops.peak_flops("cpu") is None


def test_mfu():
    assert flops.mfu(10_000, 47e9, 989e12) == pytest.approx(0.475228, abs=1e-6)  # 4.7e14 / 9.89e14, by hand
    assert flops.mfu(10_000, 47e9, None) is None
