"""Original InternLM checkpoints (model_tp{t}_pp{p}.pt): merged from any layout, written at any layout.

The reference shards are built here by hand from a known model, following the original trainer's
layout, and run by a plain-PyTorch forward that computes the way the original trainer does: each
tensor rank applies its own slice and the partial results are gathered or summed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from interop_helpers import random_model, tiny_config
from internlm.components.model.transformer import Transformer
from internlm.errors import ConfigError
from internlm.interop import load_internlm_checkpoint, load_into, save_internlm_checkpoint


def reference_shards(model: Transformer, tp: int, stage_layers: list[int]) -> dict[tuple[int, int], dict]:
    """{(t, p): that file's dict}, with the original key names, built by slicing the full weights."""
    config = model.config
    heads, hidden = config.attention.num_heads, config.hidden_size
    head_dim, per_rank = hidden // heads, heads // tp
    state = model.state_dict()
    rows = lambda t, r: t[r * t.shape[0] // tp:(r + 1) * t.shape[0] // tp]  # noqa: E731
    cols = lambda t, r: t[:, r * t.shape[1] // tp:(r + 1) * t.shape[1] // tp]  # noqa: E731
    shards = {}
    for p, count in enumerate(stage_layers):
        first = sum(stage_layers[:p])
        for r in range(tp):
            shard = {}
            if p == 0:
                shard["model.embedding.weight"] = cols(state["embed_tokens.weight"], r).clone()
            for i in range(count):
                a, b = f"layers.{first + i}.", f"model.blocks.{i}."
                attn = a + "self_attn."
                # Full fused layout (3, heads, head_dim, hidden); rank r keeps its heads of each of q, k, v.
                w = torch.stack([state[f"{attn}{x}_proj.weight"].view(heads, head_dim, hidden) for x in "qkv"])
                bias = torch.stack([state[f"{attn}{x}_proj.bias"].view(heads, head_dim) for x in "qkv"])
                shard[b + "mixer.Wqkv.weight"] = w[:, r * per_rank:(r + 1) * per_rank].reshape(-1, hidden).clone()
                shard[b + "mixer.Wqkv.bias"] = bias[:, r * per_rank:(r + 1) * per_rank].reshape(-1).clone()
                shard[b + "mixer.out_proj.weight"] = cols(state[attn + "o_proj.weight"], r).clone()
                if r == 0:
                    shard[b + "mixer.out_proj.bias"] = state[attn + "o_proj.bias"].clone()
                inv_freq = 1.0 / (config.attention.rotary.base ** (torch.arange(0, head_dim, 2).float() / head_dim))
                shard[b + "mixer.rotary_emb.inv_freq"] = inv_freq
                shard[b + "norm1.weight"] = state[a + "input_layernorm.weight"].clone()
                shard[b + "norm2.weight"] = state[a + "post_attention_layernorm.weight"].clone()
                shard[b + "mlp.w1.weight"] = rows(state[a + "mlp.gate_proj.weight"], r).clone()
                shard[b + "mlp.w2.weight"] = rows(state[a + "mlp.up_proj.weight"], r).clone()
                shard[b + "mlp.w3.weight"] = cols(state[a + "mlp.down_proj.weight"], r).clone()
            if p == len(stage_layers) - 1:
                shard["model.norm.weight"] = state["norm.weight"].clone()
                shard["model.head.weight"] = rows(state["lm_head.weight"], r).clone()
            shards[r, p] = shard
    return shards


def write(shards: dict, folder) -> None:
    folder.mkdir()
    for (t, p), shard in shards.items():
        torch.save(shard, folder / f"model_tp{t}_pp{p}.pt")


def internlm_forward(shards: dict, ids: torch.Tensor, heads: int, base: float, eps: float) -> torch.Tensor:
    """Logits the way the original trainer computes them, rank by rank and stage by stage."""
    tp = 1 + max(t for t, _ in shards)
    pp = 1 + max(p for _, p in shards)
    ranks = lambda p: [shards[t, p] for t in range(tp)]  # noqa: E731
    norm = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    # Embedding1D: each rank embeds into its slice of the hidden dim; gathered on the last dim.
    x = torch.cat([F.embedding(ids, s["model.embedding.weight"]) for s in ranks(0)], dim=-1)
    seq = ids.shape[1]
    head_dim = x.shape[-1] // heads
    angles = torch.arange(seq).float()[:, None] * (1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    half = head_dim // 2
    rotate = lambda t: t * cos[:, None] + torch.cat([-t[..., half:], t[..., :half]], -1) * sin[:, None]  # noqa: E731
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for p in range(pp):
        blocks = sorted({int(k.split(".")[2]) for k in shards[0, p] if k.startswith("model.blocks.")})
        for i in blocks:
            key = f"model.blocks.{i}."
            h = norm(x, shards[0, p][key + "norm1.weight"])
            attn = 0
            for s in ranks(p):
                qkv = h @ s[key + "mixer.Wqkv.weight"].T + s[key + "mixer.Wqkv.bias"]
                q, k, v = qkv.view(*qkv.shape[:2], 3, -1, head_dim).unbind(2)  # "b s (three h d)"
                scores = torch.einsum("bqhd,bkhd->bhqk", rotate(q), rotate(k)) / math.sqrt(head_dim)
                context = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~causal, -math.inf).softmax(-1), v)
                attn = attn + context.flatten(2) @ s[key + "mixer.out_proj.weight"].T  # row-parallel: summed
            x = x + attn + shards[0, p][key + "mixer.out_proj.bias"]
            h = norm(x, shards[0, p][key + "norm2.weight"])
            x = x + sum(
                (F.silu(h @ s[key + "mlp.w1.weight"].T) * (h @ s[key + "mlp.w2.weight"].T)) @ s[key + "mlp.w3.weight"].T
                for s in ranks(p)
            )
    x = norm(x, shards[0, pp - 1]["model.norm.weight"])
    return torch.cat([x @ s["model.head.weight"].T for s in ranks(pp - 1)], dim=-1)


@pytest.fixture
def model() -> Transformer:
    return random_model(tiny_config(num_layers=5, num_kv_heads=None, vocab_size=300))


def test_tp2_pp2_checkpoint_imports_to_the_same_weights_and_logits(tmp_path, model):
    shards = reference_shards(model, tp=2, stage_layers=[2, 3])
    write(shards, tmp_path / "ckpt")
    state = load_internlm_checkpoint(tmp_path / "ckpt")
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name

    imported = Transformer(model.config).eval()
    load_into(imported, state)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    config = model.config
    reference = internlm_forward(shards, ids, config.attention.num_heads, config.attention.rotary.base, config.norm.eps)
    with torch.no_grad():
        ours = imported(ids)
        assert (ours - reference).abs().max() <= 1e-5
        assert torch.equal(ours, model(ids))


def test_the_reference_forward_notices_a_wrong_qkv_layout(tmp_path, model):
    """Guards the test above: splitting Wqkv by plain contiguous rows (not per q/k/v) changes the logits."""
    shards = reference_shards(model, tp=2, stage_layers=[5])
    full = shards[0, 0]["model.blocks.0.mixer.Wqkv.weight"], shards[1, 0]["model.blocks.0.mixer.Wqkv.weight"]
    merged = torch.cat([full[0].view(3, -1, 64), full[1].view(3, -1, 64)], dim=1).reshape(-1, 64)
    shards[0, 0]["model.blocks.0.mixer.Wqkv.weight"], shards[1, 0]["model.blocks.0.mixer.Wqkv.weight"] = merged.chunk(2)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    config = model.config
    wrong = internlm_forward(shards, ids, config.attention.num_heads, config.attention.rotary.base, config.norm.eps)
    with torch.no_grad():
        assert (wrong - model(ids)).abs().max() > 1e-2


def test_save_at_tp2_pp2_writes_the_original_layout_and_reads_back_exactly(tmp_path, model):
    paths = save_internlm_checkpoint(model.state_dict(), model.config, tmp_path / "out", tp=2, pp=2)
    assert sorted(p.name for p in paths) == [f"model_tp{t}_pp{p}.pt" for t in range(2) for p in range(2)]
    reference = reference_shards(model, tp=2, stage_layers=[2, 3])  # the trainer's partition: last stage +1
    for (t, p), expected in reference.items():
        written = torch.load(tmp_path / "out" / f"model_tp{t}_pp{p}.pt", weights_only=True)
        assert written.keys() == expected.keys(), (t, p)
        for key in expected:
            assert torch.equal(written[key], expected[key]), (t, p, key)
    back = load_internlm_checkpoint(tmp_path / "out")
    for name, tensor in model.state_dict().items():
        assert torch.equal(back[name], tensor), name
    assert torch.load(tmp_path / "out" / "model_config.pt", weights_only=True)["num_layers"] == 5


@pytest.mark.parametrize("first, second", [((1, 1), (2, 5)), ((2, 3), (1, 2))])
def test_resharding_between_layouts_is_exact(tmp_path, model, first, second):
    save_internlm_checkpoint(model.state_dict(), model.config, tmp_path / "a", tp=first[0], pp=first[1])
    state = load_internlm_checkpoint(tmp_path / "a")
    save_internlm_checkpoint(state, model.config, tmp_path / "b", tp=second[0], pp=second[1])
    back = load_internlm_checkpoint(tmp_path / "b")
    for name, tensor in model.state_dict().items():
        assert torch.equal(back[name], tensor), name


def test_a_bias_free_tied_model_round_trips_through_zero_biases(tmp_path):
    config = tiny_config(num_layers=3, num_kv_heads=None, vocab_size=300, bias=False, tie=True)
    model = random_model(config)
    save_internlm_checkpoint(model.state_dict(), config, tmp_path / "ckpt", tp=2, pp=3)
    state = load_internlm_checkpoint(tmp_path / "ckpt", config)
    assert state.keys() == model.state_dict().keys()
    imported = Transformer(config)
    load_into(imported, state)
    ids = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        assert torch.equal(imported(ids), model(ids))


def test_missing_shard_and_unsupported_models_are_config_errors(tmp_path, model):
    save_internlm_checkpoint(model.state_dict(), model.config, tmp_path / "ckpt", tp=2, pp=2)
    (tmp_path / "ckpt" / "model_tp1_pp0.pt").unlink()
    with pytest.raises(ConfigError, match="missing model_tp1_pp0.pt"):
        load_internlm_checkpoint(tmp_path / "ckpt")
    gqa = tiny_config(num_kv_heads=2)
    with pytest.raises(ConfigError, match="grouped-query"):
        save_internlm_checkpoint(random_model(gqa).state_dict(), gqa, tmp_path / "gqa", tp=1, pp=1)
    with pytest.raises(ConfigError, match="tp=3 does not divide"):
        save_internlm_checkpoint(model.state_dict(), model.config, tmp_path / "tp3", tp=3, pp=1)
    assert not (tmp_path / "gqa").exists() and not (tmp_path / "tp3").exists()


@pytest.mark.parametrize("field, value, override", [
    ("num_heads", 8, "model.attention.num_heads=4"),
    ("eps", 1e-6, "model.norm.eps=1e-05"),
])
def test_a_checkpoint_of_another_architecture_with_the_same_shapes_is_refused_with_the_override(tmp_path, model, field, value, override):
    """8 heads or another eps change the logits but no tensor's shape: model_config.pt is read."""
    import dataclasses

    save_internlm_checkpoint(model.state_dict(), model.config, tmp_path / "out", tp=1, pp=1)
    config = model.config
    if field == "num_heads":
        other = dataclasses.replace(config, attention=dataclasses.replace(config.attention, num_heads=value))
    else:
        other = dataclasses.replace(config, norm=dataclasses.replace(config.norm, eps=value))
    assert {k: tuple(v.shape) for k, v in Transformer(other).state_dict().items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }  # same shapes: only model_config.pt can tell
    with pytest.raises(ConfigError) as info:
        load_internlm_checkpoint(tmp_path / "out", other)
    assert override in info.value.fix and "model_config.pt" in info.value.render()
    state = load_internlm_checkpoint(tmp_path / "out", model.config)  # the matching config loads
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_shape_mismatches_name_the_overrides_with_the_checkpoints_values(tmp_path, model):
    import dataclasses

    save_internlm_checkpoint(model.state_dict(), model.config, tmp_path / "out", tp=1, pp=1)
    (tmp_path / "out" / "model_config.pt").unlink()  # an old checkpoint without one: shapes must tell
    config = model.config
    other = dataclasses.replace(config, vocab_size=320, mlp=dataclasses.replace(config.mlp, intermediate_size=config.mlp.intermediate_size + 8))
    state = load_internlm_checkpoint(tmp_path / "out", other)
    with pytest.raises(ConfigError) as info:
        load_into(Transformer(other), state)
    assert "model.vocab_size=300" in info.value.fix
    assert f"model.mlp.intermediate_size={config.mlp.intermediate_size}" in info.value.fix
