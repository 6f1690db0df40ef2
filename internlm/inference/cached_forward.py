"""The model's forward with a KV cache, run from the Transformer's own submodules.

The model stays pure (training code never sees a cache): this module calls its embedding, each
block's norms, q/k/v/o projections, rotary, MLP, the final norm and the head, and only replaces
the attention kernel by one that reads and writes the cache. The math is the model's.

* `prefill_batch(tokens [B, C], slots, starts, lengths)`: a chunk of up to C prompt tokens for
  each of B requests at once, request b's tokens at positions starts[b] .. starts[b]+lengths[b]-1
  (the rest of its row is padding). Keys and values go into the slots' cache rows; queries attend
  causally over the slot's earlier rows and the chunk. A long prompt is prefilled in several
  chunks (starts > 0), so decoding of other requests can run between them. Returns the logits
  of each row's last real token.
* `prefill(tokens [S], slot)`: one whole prompt (prefill_batch with one row starting at 0).
* `decode(tokens [B], positions [B], kv_len)`: one new token for slots 0..B-1 at the given
  positions; attends over cache rows 0..kv_len-1, masked per slot to its own length. Rows of
  slots that are not decoding compute garbage that nobody reads. Shapes depend only on
  (B, kv_len), which the engine rounds up to buckets so compiled code and CUDA graphs are reused.
  `decode_layer` is one block of it: the unit that `torch.compile` compiles once for all layers.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

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


def attention_kernels(device: torch.device):
    """On CUDA: SDPA's flash kernel (causal prefill), else the memory-efficient one (masks), never
    cuDNN's, which builds and caches an execution plan for every new shape (every prompt length
    and batch); math as the last resort. Elsewhere: torch's own choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True)


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


def prefill_batch(model, cache: KVCache, tokens: torch.Tensor, slots: list[int], starts: list[int],
                  lengths: list[int]) -> torch.Tensor:
    """Logits [B, vocab] of each row's last real token; the slots' cache holds the chunk's keys and values."""
    batch, width = tokens.shape
    device = tokens.device
    offsets = torch.arange(width, device=device)
    positions = torch.tensor(starts, device=device)[:, None] + offsets[None]  # [B, C]
    # Where the real tokens go in the cache (padding is not written: it may lie past the context).
    row_of = [b for b, n in enumerate(lengths) for _ in range(n)]
    col_of = [c for n in lengths for c in range(n)]
    rows, cols = torch.tensor(row_of, device=device), torch.tensor(col_of, device=device)
    slot_rows = torch.tensor(slots, device=device)
    cache_slots, cache_positions = slot_rows[rows], positions[rows, cols]
    fresh = not any(starts)  # every row starts its prompt here: plain causal attention over the chunk
    kv_len = max(s + n for s, n in zip(starts, lengths))
    # True where a query may attend: the slot's earlier tokens and the chunk up to itself.
    mask = None if fresh else (torch.arange(kv_len, device=device)[None, None, :] <= positions[:, :, None])[:, None]
    x = model.embed_tokens(tokens)
    rope = model.rotary.cos_sin(positions, x.dtype)

    def attend_and_cache(layer: int):
        def run(attn, q, k, v):
            keys, values = cache.keys[layer], cache.values[layer]
            keys[cache_slots, :, cache_positions] = k[rows, cols]
            values[cache_slots, :, cache_positions] = v[rows, cols]
            gqa = attn.num_heads != attn.num_kv_heads
            if fresh:
                return _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, attn.scale, gqa)
            return _attend(q.transpose(1, 2), keys[slot_rows, :, :kv_len], values[slot_rows, :, :kv_len], mask,
                           attn.scale, gqa)
        return run

    with attention_kernels(device):
        for layer, block in enumerate(model.layers.values()):
            x = _block(block, x, rope, attend_and_cache(layer))
    last = x[torch.arange(batch, device=device), torch.tensor(lengths, device=device) - 1]
    return model.lm_head(model.norm(last[:, None]))[:, 0]


def prefill(model, cache: KVCache, tokens: torch.Tensor, slot: int) -> torch.Tensor:
    """Logits [vocab] after the prompt `tokens` [S]; the slot's cache holds its keys and values."""
    return prefill_batch(model, cache, tokens[None], [slot], [0], [tokens.shape[0]])[0]


def decode_layer(block, x, rope, keys, values, rows, positions, mask, fused=None):
    """One block of a decode step: x [B, 1, hidden] for slots 0..B-1; keys/values: this layer's
    cache [slots, Hkv, max_context, D]; mask [B, 1, 1, kv_len]. Writes the new keys and values.
    `fused` (fused_weights.FusedBlock): q/k/v and gate/up each as one matmul, the same math."""
    kv_len = mask.shape[-1]
    batch = x.shape[0]

    def run(attn, q, k, v):
        keys[rows, :, positions] = k[:, 0]
        values[rows, :, positions] = v[:, 0]
        return _attend(q.transpose(1, 2), keys[:batch, :, :kv_len], values[:batch, :, :kv_len], mask, attn.scale,
                       attn.num_heads != attn.num_kv_heads)

    if fused is None:
        return _block(block, x, rope, run)
    attn, (qkv_weight, qkv_bias, gate_up_weight, gate_up_bias) = block.self_attn, fused
    q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
    q, k, v = F.linear(block.input_layernorm(x), qkv_weight, qkv_bias).split((q_size, kv_size, kv_size), dim=-1)
    q = q.view(batch, 1, attn.num_heads, attn.head_dim)
    k = k.view(batch, 1, attn.num_kv_heads, attn.head_dim)
    q, k = _rotate(attn, q, k, rope)
    out = run(attn, q, k, v.view(batch, 1, attn.num_kv_heads, attn.head_dim))
    x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, attn.num_heads * attn.head_dim))
    gate, up = F.linear(block.post_attention_layernorm(x), gate_up_weight, gate_up_bias).chunk(2, dim=-1)
    return x + block.mlp.down_proj(F.silu(gate) * up)  # SwiGLU.forward, its two input matmuls as one


def decode(model, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int,
           layer_fn=decode_layer, fused=None) -> torch.Tensor:
    """Logits [B, vocab] for one token per slot 0..B-1 (tokens, positions: [B] int64). `layer_fn`
    runs each block (decode_layer, or a compiled copy of it); `fused`: a FusedBlock per layer."""
    batch = tokens.shape[0]
    x = model.embed_tokens(tokens[:, None])
    rope = model.rotary.cos_sin(positions[:, None], x.dtype)
    rows = torch.arange(batch, device=tokens.device)
    # True where a slot may attend: its own earlier tokens and the new one.
    mask = (torch.arange(kv_len, device=tokens.device)[None, :] <= positions[:, None])[:, None, None, :]
    for layer, block in enumerate(model.layers.values()):
        x = layer_fn(block, x, rope, cache.keys[layer], cache.values[layer], rows, positions, mask,
                     None if fused is None else fused[layer])
    return model.lm_head(model.norm(x))[:, 0]
