"""FLOPs accounting: model FLOPs per token, MFU, and InternLM's own TFLOPS formula.

Two conventions, both reported so figures compare with ours, torchtitan's and InternLM's:

* model FLOPs (ours, and torchtitan's up to the attention term): 6 x the parameters that take
  part in a matmul per token (the head yes, the embedding lookup no), plus the attention scores
  and values: per layer 2 matmuls of (context x hidden) per token, x3 for forward + backward,
  i.e. 12 x layers x hidden x context. `context` is the sequence length for full attention
  (torchtitan's MFU), half of it for causal attention (ours: the work a causal kernel does), or
  the mean attended keys of a packed batch (`mean_attended_keys`). Recomputation is not counted.
* InternLM's formula (the seed's `get_megatron_flops`): activation checkpointing counted as a 4th
  pass over the layers, full s^2 attention, the head counted 3 times.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def matmul_parameters(model_cfg) -> int:
    """Parameters that take part in a matmul per token (embedding lookups do not; the head does)."""
    hidden, layers = model_cfg.hidden_size, model_cfg.num_layers
    attn = model_cfg.attention
    head_dim = hidden // attn.num_heads
    kv = (attn.num_kv_heads or attn.num_heads) * head_dim
    per_layer = hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * model_cfg.mlp.intermediate_size
    return layers * per_layer + model_cfg.vocab_size * hidden


def mean_attended_keys(document_lengths: Iterable[int]) -> float:
    """Mean number of keys a token attends to under causal, document-masked attention:
    a document of length L contributes 1 + 2 + ... + L = L (L + 1) / 2 over its L tokens."""
    lengths = [int(n) for n in document_lengths]
    tokens = sum(lengths)
    return sum(n * (n + 1) / 2 for n in lengths) / tokens if tokens else 0.0


def attention_flops_per_token(model_cfg, context: float) -> float:
    """Forward + backward FLOPs of attention scores and values per token, for `context` keys."""
    return 12 * model_cfg.num_layers * model_cfg.hidden_size * context


def flops_per_token(model_cfg, seq_len: int, causal: bool = True, mean_context: float | None = None) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention.

    The attention context is `mean_context` when given (a packed batch's mean attended keys),
    else seq_len / 2 when causal (ours), else seq_len (full s^2, torchtitan's MFU convention).
    """
    if mean_context is None:
        mean_context = seq_len / 2 if causal else seq_len
    return 6 * matmul_parameters(model_cfg) + attention_flops_per_token(model_cfg, mean_context)


def internlm_flops_per_token(model_cfg, seq_len: int, checkpointing: bool) -> float:
    """InternLM's (v0.2) formula per token: factor x ((8 + 4 r) h^2 + 4 s h) x layers + 6 h V, with
    factor 4 under activation checkpointing (3 otherwise) and r the SwiGLU-adjusted MLP ratio
    (1.5 x ffn / hidden; the seed used its config's nominal 8/3, we use the real FFN width)."""
    hidden = model_cfg.hidden_size
    factor = 4 if checkpointing else 3
    mlp_ratio = 1.5 * model_cfg.mlp.intermediate_size / hidden
    per_layer = (8 + 4 * mlp_ratio) * hidden**2 + 4 * seq_len * hidden
    return factor * per_layer * model_cfg.num_layers + 6 * hidden * model_cfg.vocab_size


def internlm_tflops(model_cfg, seq_len: int, tokens_per_device_per_s: float, checkpointing: bool) -> float:
    """TFLOPS per GPU by InternLM's formula, so figures compare with the seed's table."""
    return internlm_flops_per_token(model_cfg, seq_len, checkpointing) * tokens_per_device_per_s / 1e12


# Dense bf16 tensor-core peaks (datasheet, no sparsity), matched against torch's device name;
# the longest matching key wins ("H200" before "H20").
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "H20": 148e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The device's peak in FLOP/s, or None when unknown (MFU is then not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(tokens_per_device_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s per device over the device's peak."""
    return None if not peak else tokens_per_device_per_s * flops_per_token / peak


def document_lengths_from_positions(position_ids: Sequence[Sequence[int]]) -> list[int]:
    """Lengths of the documents in packed rows (positions restart at 0 per document)."""
    lengths: list[int] = []
    for row in position_ids:
        current = 0
        for pos in row:
            if pos == 0 and current:
                lengths.append(current)
                current = 0
            current += 1
        if current:
            lengths.append(current)
    return lengths
