"""FLOPs accounting: model FLOPs per token, MFU, and InternLM's own TFLOPS formula."""

from __future__ import annotations


def matmul_parameters(model_cfg) -> int:
    """Parameters that take part in a matmul per token (embedding lookups do not; the head does)."""
    hidden, layers = model_cfg.hidden_size, model_cfg.num_layers
    attn = model_cfg.attention
    head_dim = hidden // attn.num_heads
    kv = (attn.num_kv_heads or attn.num_heads) * head_dim
    per_layer = hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * model_cfg.mlp.intermediate_size
    return layers * per_layer + model_cfg.vocab_size * hidden


def flops_per_token(model_cfg, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention scores and values
    (2 matmuls of seq x head_dim per head, x3 for forward + backward, halved when causal)."""
    attention = 12 * model_cfg.num_layers * model_cfg.hidden_size * seq_len
    if causal:
        attention /= 2
    return 6 * matmul_parameters(model_cfg) + attention


# Dense bf16 tensor-core peaks (datasheet, no sparsity), matched against torch's device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The device's peak in FLOP/s, or None when unknown (MFU is then not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None
