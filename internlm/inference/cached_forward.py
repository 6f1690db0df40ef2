"""The model's forward with a KV cache, run from the Transformer's own submodules.

The model stays pure (training code never sees a cache): this module calls its embedding, each
block's norms, q/k/v/o projections, rotary, MLP, the final norm and the head, and only replaces
the attention kernel by one that reads and writes the cache. The math is the model's.

* `prefill(tokens [S], slot)`: one prompt, causal attention over itself; fills the slot's cache
  rows 0..S-1 and returns the last position's logits.
* `decode(tokens [B], positions [B], slot_count, kv_len)`: one new token for slots 0..B-1 at the
  given positions; attends over cache rows 0..kv_len-1, masked per slot to its own length.
  Rows of slots that are free compute garbage that nobody reads. Shapes depend only on
  (B, kv_len), which the engine rounds up to buckets so compiled graphs are reused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from internlm.components.model.rotary import apply_rotary
from internlm.inference.kv_cache import KVCache


def _rotate(attn, q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
    cos, sin = rope
    if attn.rotary_kernel is not None:
        return attn.rotary_kernel(q, k, cos, sin)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def _qkv(attn, x: torch.Tensor, rope):
    """q [B, S, H, D], k and v [B, S, Hkv, D], rotated, exactly as SelfAttention.forward."""
    batch, seq, _ = x.shape
    q = attn.q_proj(x).view(batch, seq, attn.num_heads, attn.head_dim)
    k = attn.k_proj(x).view(batch, seq, attn.num_kv_heads, attn.head_dim)
    v = attn.v_proj(x).view(batch, seq, attn.num_kv_heads, attn.head_dim)
    q, k = _rotate(attn, q, k, rope)
    return q, k, v


def _attend(q, k, v, mask, scale, gqa: bool) -> torch.Tensor:
    """q [B, H, S, D], k/v [B, Hkv, T, D] -> [B, H, S, D] (SDPA; fp32 softmax inside)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def _block(block, x, rope, attend_and_cache):
    attn = block.self_attn
    h = block.input_layernorm(x)
    q, k, v = _qkv(attn, h, rope)
    out = attend_and_cache(attn, q, k, v)
    batch, seq = x.shape[:2]
    x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, seq, attn.num_heads * attn.head_dim))
    return x + block.mlp(block.post_attention_layernorm(x))


def prefill(model, cache: KVCache, tokens: torch.Tensor, slot: int) -> torch.Tensor:
    """Logits [vocab] after the prompt `tokens` [S]; the slot's cache holds its keys and values."""
    seq = tokens.shape[0]
    positions = torch.arange(seq, device=tokens.device)[None]
    x = model.embed_tokens(tokens[None])
    rope = model.rotary.cos_sin(positions, x.dtype)

    def attend_and_cache(layer: int):
        def run(attn, q, k, v):
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [1, Hkv, S, D]
            cache.keys[layer, slot, :, :seq] = k[0]
            cache.values[layer, slot, :, :seq] = v[0]
            return _attend(q.transpose(1, 2), k, v, None, attn.scale, attn.num_heads != attn.num_kv_heads)
        return run

    for layer, block in enumerate(model.layers.values()):
        x = _block(block, x, rope, attend_and_cache(layer))
    return model.lm_head(model.norm(x[:, -1:]))[0, 0]


def decode(model, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Logits [B, vocab] for one token per slot 0..B-1 (tokens, positions: [B] int64)."""
    batch = tokens.shape[0]
    x = model.embed_tokens(tokens[:, None])
    rope = model.rotary.cos_sin(positions[:, None], x.dtype)
    rows = torch.arange(batch, device=tokens.device)
    # True where a slot may attend: its own earlier tokens and the new one.
    mask = (torch.arange(kv_len, device=tokens.device)[None, :] <= positions[:, None])[:, None, None, :]

    def attend_and_cache(layer: int):
        def run(attn, q, k, v):
            keys, values = cache.keys[layer, :batch], cache.values[layer, :batch]
            keys[rows, :, positions] = k[:, 0]
            values[rows, :, positions] = v[:, 0]
            return _attend(q.transpose(1, 2), keys[:, :, :kv_len], values[:, :, :kv_len], mask, attn.scale,
                           attn.num_heads != attn.num_kv_heads)
        return run

    for layer, block in enumerate(model.layers.values()):
        x = _block(block, x, rope, attend_and_cache(layer))
    return model.lm_head(model.norm(x))[:, 0]
