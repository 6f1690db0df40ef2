"""The decoder: document masking, rotary restart, grouped-query attention."""

from __future__ import annotations

import math

import torch

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.rotary import RotaryConfig, RotaryEmbedding, apply_rotary
from internlm.components.model.transformer import Transformer, TransformerConfig


def tiny(**attention) -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=50,
        hidden_size=32,
        num_layers=2,
        attention=AttentionConfig(num_heads=4, backend="eager", **attention),
        mlp=MLPConfig(intermediate_size=64),
    )
    return Transformer(config).double()


def test_packed_documents_see_only_themselves_and_positions_restart():
    model = tiny()
    doc_a, doc_b = torch.randint(0, 50, (1, 5)), torch.randint(0, 50, (1, 7))
    packed = torch.cat([doc_a, doc_b], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    packed_logits = model(packed, positions)
    torch.testing.assert_close(packed_logits[:, :5], model(doc_a), rtol=0, atol=1e-10)
    torch.testing.assert_close(packed_logits[:, 5:], model(doc_b), rtol=0, atol=1e-10)


def test_without_the_restart_the_second_document_would_differ():
    """Guards the test above: the model is sensitive to what the mask removes."""
    model = tiny()
    packed = torch.randint(0, 50, (1, 12))
    unmasked = model(packed)  # one document of 12 tokens
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    masked = model(packed, positions)
    assert (unmasked[:, 5:] - masked[:, 5:]).abs().max() > 1e-3


def test_rotary_is_a_rotation_by_position_times_frequency():
    head_dim = 4
    rope = RotaryEmbedding(RotaryConfig(base=100.0), head_dim)
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    position = 3
    cos, sin = rope.cos_sin(torch.tensor([[position]]), torch.float32)
    out = apply_rotary(x, cos, sin)[0, 0, 0]
    # Pairs (x0, x2) and (x1, x3) rotate by position * base^(-2i/d), i = 0, 1.
    expected = []
    for i, (a, b) in enumerate([(1.0, 3.0), (2.0, 4.0)]):
        angle = position * 100.0 ** (-2 * i / head_dim)
        expected.append((a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)))
    torch.testing.assert_close(out, torch.tensor([expected[0][0], expected[1][0], expected[0][1], expected[1][1]]))


def test_rotated_dot_products_depend_only_on_relative_position():
    rope = RotaryEmbedding(RotaryConfig(), 8)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(pq, pk):
        cq, sq = rope.cos_sin(torch.tensor([[pq]]), torch.float64)
        ck, sk = rope.cos_sin(torch.tensor([[pk]]), torch.float64)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=1e-5, atol=1e-5)  # angles are fp32


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    gqa = tiny(num_kv_heads=2)
    mha = tiny()
    state = gqa.state_dict()
    for name, tensor in list(state.items()):
        if ".k_proj." in name or ".v_proj." in name:  # [2 heads * 8, ...] -> [4 heads * 8, ...]
            heads = tensor.view(2, 8, *tensor.shape[1:])
            state[name] = heads.repeat_interleave(2, dim=0).reshape(32, *tensor.shape[1:])
    mha.load_state_dict(state)
    tokens = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(gqa(tokens), mha(tokens))


def test_loss_from_forward_equals_cross_entropy_of_logits():
    model = tiny()
    tokens, labels = torch.randint(0, 50, (2, 6)), torch.randint(0, 50, (2, 6))
    labels[0, :2] = -100
    logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(model(tokens, labels=labels), expected)


def test_tied_embeddings_share_one_matrix():
    config = TransformerConfig(vocab_size=50, hidden_size=32, num_layers=1, attention=AttentionConfig(num_heads=4), mlp=MLPConfig(intermediate_size=64), tie_embeddings=True)
    model = Transformer(config)
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = Transformer(TransformerConfig(**{**config.__dict__, "tie_embeddings": False}))
    assert model.num_parameters() == untied.num_parameters() - 50 * 32
