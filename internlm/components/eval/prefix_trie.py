"""Score many token sequences that share prefixes, computing every shared prefix once.

Multiple-choice requests repeat themselves: the options of one question share its prompt, and
few-shot items of one subject share the same few-shot preamble (hint + examples), often 80% of
the prompt. The sequences are put in a token trie, and the trie's nodes are packed into one row
in depth-first order: each node attends to its ancestors only (a tree mask) at the position of
its depth. One forward over the packed row gives, at every node, exactly the logits the node's
own sequence would give alone; a node shared by many sequences is computed once. No KV cache is
needed, and a Hugging Face model runs it as is (a 4D attention mask and position ids).

In depth-first order node j is an ancestor of node i exactly when j <= i < end[j], end[j] being
one past j's last descendant: the mask is built on the device from that one vector.

Cost: every query attends over the whole packed row (masked), so rows are kept to
`chunk_tokens` nodes (4,096 by default; the attention over them is a few percent of a 7B
forward); several rows go into one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# (tokens [C, N], positions [C, N], mask [C, 1, N, N] bool, keep [K] node indices) -> logits [C, K, V]
TreeForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Chunk:
    """Rows packed into one trie (nodes in depth-first order): `paths[r]` are the node indices of
    row `rows[r]`'s tokens."""

    rows: list[int]
    tokens: list[int]
    depth: list[int]
    paths: list[list[int]]

    @property
    def size(self) -> int:
        return len(self.tokens)


def _common(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differs = np.flatnonzero(a[:n] != b[:n])
    return int(differs[0]) if len(differs) else n


def pack(rows: Sequence[Sequence[int]], chunk_tokens: int) -> list[Chunk]:
    """Tries of at most `chunk_tokens` nodes (a longer row gets a trie of its own). Rows are
    inserted in sorted order, so that a row's longest shared prefix is the one with the row
    before it, and the nodes come out in depth-first order."""
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    arrays = {i: np.asarray(rows[i], dtype=np.int64) for i in order}
    chunks: list[Chunk] = []
    chunk: Chunk | None = None
    previous: list[int] = []  # node path of the previous row of this chunk
    for i in order:
        row = arrays[i]
        shared = _common(arrays[chunk.rows[-1]], row) if chunk is not None else 0
        if chunk is None or chunk.size + len(row) - shared > chunk_tokens:
            chunk = Chunk([], [], [], [])
            chunks.append(chunk)
            shared, previous = 0, []
        start = chunk.size
        chunk.tokens.extend(row[shared:].tolist())
        chunk.depth.extend(range(shared, len(row)))
        path = previous[:shared] + list(range(start, chunk.size))
        chunk.rows.append(i)
        chunk.paths.append(path)
        previous = path
    return chunks


def _subtree_ends(depth: Sequence[int]) -> list[int]:
    """In depth-first order a node's subtree is the run of deeper nodes after it: end[j] is the
    first later node at j's depth or above."""
    end = [len(depth)] * len(depth)
    open_nodes: list[int] = []
    for k, d in enumerate(depth):
        while open_nodes and depth[open_nodes[-1]] >= d:
            end[open_nodes.pop()] = k
        open_nodes.append(k)
    return end


def tree_inputs(chunks: Sequence[Chunk], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens [C, N], positions [C, N], mask [C, 1, N, N] (True: may attend) of chunks padded to
    the longest; a padding node attends to itself only."""
    n = -(-max(c.size for c in chunks) // 64) * 64  # a multiple of 64: the masked CUDA kernels want aligned rows
    tokens = torch.zeros(len(chunks), n, dtype=torch.long)
    positions = torch.zeros(len(chunks), n, dtype=torch.long)
    end = torch.arange(1, n + 1).repeat(len(chunks), 1)
    for row, c in enumerate(chunks):
        tokens[row, : c.size] = torch.tensor(c.tokens)
        positions[row, : c.size] = torch.tensor(c.depth)
        end[row, : c.size] = torch.tensor(_subtree_ends(c.depth))
    tokens, positions, end = tokens.to(device), positions.to(device), end.to(device)
    nodes = torch.arange(n, device=device)
    # query i may attend key j: j is i or an ancestor of i (j <= i < end[j])
    mask = (nodes[None, :] <= nodes[:, None])[None] & (nodes[None, :, None] < end[:, None, :])
    return tokens, positions, mask[:, None]


# ---- the tree forward of each model family ----------------------------------------------------


def internlm_tree_forward(model) -> TreeForward:
    """Our Transformer, run from its own submodules (as the model's forward, with the tree mask
    and explicit positions in place of its document-causal kernel)."""
    from internlm.components.model.rotary import apply_rotary

    @torch.no_grad()
    def forward(tokens, positions, mask, keep):
        batch, seq = tokens.shape
        x = model.embed_tokens(tokens)
        cos, sin = model.rotary.cos_sin(positions, x.dtype)
        for block in model.layers.values():
            attn = block.self_attn
            h = block.input_layernorm(x)
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
            q = q.view(batch, seq, attn.num_heads, attn.head_dim)
            k = k.view(batch, seq, attn.num_kv_heads, attn.head_dim)
            v = v.view(batch, seq, attn.num_kv_heads, attn.head_dim)
            if attn.rotary_kernel is not None:
                q, k = attn.rotary_kernel(q, k, cos, sin)
            else:
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            groups = attn.num_heads // attn.num_kv_heads
            if groups > 1:  # repeated here: the masked memory-efficient kernel takes no GQA
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, seq, attn.num_heads * attn.head_dim))
            x = x + block.mlp(block.post_attention_layernorm(x))
        return model.lm_head(model.norm(x[:, keep]))

    return forward


def hf_tree_forward(model) -> TreeForward:
    """A Hugging Face causal LM: a custom 4D mask (additive, so eager attention takes it too) is
    passed through as is; logits only at the kept positions."""

    @torch.no_grad()
    def forward(tokens, positions, mask, keep):
        dtype = next(model.parameters()).dtype
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        out = model(input_ids=tokens, attention_mask=additive, position_ids=positions, logits_to_keep=keep, use_cache=False)
        return out.logits

    return forward
