"""Losses over the LM head: next-token cross-entropy, computed from the final hidden states.

Every loss component is called as ``loss(hidden [N, H], head_weight [V, H], labels [N])`` and
returns ``(loss_sum, num_tokens)``: the SUM of the per-token losses over labelled tokens (fp32
scalar tensor) and how many tokens were labelled (int64 scalar tensor; labels equal to
IGNORE_INDEX = -100 take no loss). Sums, not means, so that micro batches and data-parallel ranks
combine exactly: the trainer divides by the labelled tokens of the whole global batch.

Taking the head weight (not logits) lets a loss avoid materialising the [N, V] logits: at
InternLM's vocab (103,168) and 8,192 tokens the fp32 logits alone are 3.4 GB.

- cross_entropy: plain F.linear + F.cross_entropy in fp32; the reference.
- chunked: pure PyTorch fused linear + cross-entropy, chunk by chunk over tokens.
- liger: liger-kernel's fused linear cross-entropy (Triton), when it imports on a CUDA device.
"""

from internlm.components.loss import chunked, cross_entropy, liger  # noqa: F401  (registers them)
