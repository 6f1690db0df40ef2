"""A per-device memory estimate, printed by `task=plan` before anything is allocated.

Rules of thumb, not a promise: weights scale with the parameters each device holds (sharded over
the ZeRO group and the tensor-parallel ranks), gradients and AdamW states with the trainable ones
among them (all of them, or a LoRA's adapters over a frozen base); a frozen DPO reference is a
second copy of the weights. Activations per layer and token: what a block saves for its backward,
~13 x hidden (norm inputs and outputs, q, k, v, rotated q and k, attention output) + 4 x the
SwiGLU width (gate, up, silu(gate), their product) in 16-bit (measured on an H200 for
internlm_7b without recompute: 12.2 GiB at 2,048 tokens, this count 11.9; Korthikanti et al.'s 34 x
hidden assumes a 4 x hidden GeLU MLP); a full recompute keeps only each block's input. Mixed
precision also keeps the 16-bit copy of every weight that autocast made for the forward: without
a full recompute the matmuls save it for their backward; with one, autocast's cache still holds
it until the forward ends, which is above the fp32 gradients when they already exist (gradient
accumulation: the second micro batch's forward).
"""

from __future__ import annotations

from internlm.components.strategy.base import ParallelLayout

GIB = 1024**3


def estimate_per_device(
    model_cfg,
    parameters: int,
    layout: ParallelLayout,
    micro_batch: int,
    seq_len: int,
    precision: str,
    checkpointing: str,
    full_logits: bool = True,
    attention_backend: str = "flex",
    matmul: str = "bf16",
    trainable: int | None = None,
    reference_parameters: int = 0,
    grad_accumulation: int | None = None,
    master_weights: bool = False,
) -> dict[str, float]:
    """`full_logits`: the loss materialises fp32 logits for the whole micro batch (the plain
    cross-entropy); fused losses hold one chunk, counted as 2048 tokens. `attention_backend`
    eager or sdpa materialise the [B, heads, S, S] scores (eager: fp32 scores and probabilities
    kept for backward; sdpa: its dense boolean mask and the math kernel's probabilities).
    `matmul` fp8_*: activations saved in fp8 (measured on an H200: x0.45). `trainable`: the
    parameters that get gradients and optimizer states (default: all). `reference_parameters`:
    a frozen model beside it (task.reference=frozen: the base model's count), weights only. A
    frozen base keeps as many activations as a trained one: its LoRA branches and input
    gradients need them. `grad_accumulation`: micro batches per optimizer step (None: unknown,
    counted as more than one). `master_weights`: the optimizer keeps fp32 copies of bf16 weights and
    fp32 moments (adamw_bf16's optimizer.master_weights)."""
    shards = layout.shard * layout.tensor
    held = parameters / shards
    trained = (parameters if trainable is None else trainable) / shards
    weight_bytes = 2 if precision == "bf16-true" else 4  # mixed precision keeps fp32 master weights
    tokens = micro_batch * seq_len
    act_bytes = 4 if precision == "32-true" else 2
    saved_per_token = 13 * model_cfg.hidden_size + 4 * model_cfg.mlp.intermediate_size
    per_layer = act_bytes * tokens * saved_per_token / layout.tensor
    if checkpointing == "full":
        activations = model_cfg.num_layers * act_bytes * tokens * model_cfg.hidden_size + per_layer
    elif checkpointing == "selective":
        activations = model_cfg.num_layers * per_layer * 0.5
    else:
        activations = model_cfg.num_layers * per_layer
    if matmul.startswith("fp8") and checkpointing != "full":
        activations *= 0.45
    # s x s attention scores of the dense backends, per layer that keeps them (1 under full AC)
    heads = model_cfg.attention.num_heads / layout.tensor
    score_bytes = {"eager": 8, "sdpa": 4 + 1}.get(attention_backend, 0)
    kept_layers = 1 if checkpointing == "full" else model_cfg.num_layers
    attention_scores = kept_layers * micro_batch * heads * seq_len * seq_len * score_bytes
    logit_tokens = tokens if full_logits else min(tokens, 2048)
    logits = 4 * logit_tokens * model_cfg.vocab_size / layout.tensor
    # Autocast caches its bf16 copy of each weight for the whole forward. Without a full recompute
    # they are saved for backward anyway. With one, they meet the fp32 gradients (and so count)
    # only in a later micro batch's forward: internlm_7b bf16-mixed, full AC, 2 x 2,048 tokens in
    # micro batches of 1 peaked at 125.09 GiB allocated / 132.96 reserved where weights +
    # gradients + moments + activations + logits are 110.8 (the +13.6 GiB of copies: 124.4); with
    # one micro batch (1 x 4,096) it peaked at 109.3, the gradients arriving after the cache is gone.
    caches_meet_gradients = checkpointing != "full" or grad_accumulation is None or grad_accumulation > 1
    parts = {
        "weights": held * weight_bytes,
        "gradients": trained * weight_bytes,
        # AdamW's two moments, in the parameters' dtype (torch's AdamW and adamw_bf16 alike), or
        # an fp32 master copy and fp32 moments
        "optimizer_states": trained * (12 if master_weights and weight_bytes < 4 else 2 * weight_bytes),
        "reference": reference_parameters / shards * weight_bytes,
        "autocast_weights": held * 2 if precision.endswith("-mixed") and caches_meet_gradients else 0.0,
        "activations": activations,
        "attention_scores": attention_scores,
        "logits": logits,
    }
    parts["total"] = sum(parts.values())
    return {name: round(value / GIB, 3) for name, value in parts.items()}
