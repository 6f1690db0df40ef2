"""The original InternLM trainer's checkpoints (``model_tp{t}_pp{p}.pt``), read at any tp/pp layout
and written at a chosen one.

Each file is a ``torch.save``'d dict for one (tensor rank t, pipeline stage p), keys prefixed
``model.``. Layout, and where each piece lands in our names:

* ``embedding.weight`` (first stage): [vocab, hidden / tp], split on the hidden dim -> embed_tokens.
* ``blocks.{i}.mixer.Wqkv.{weight,bias}``: a column-parallel linear, so rank t holds a contiguous
  slice of the output rows, and the model rearranges that local output as ``(three, heads, dim)``
  (``b s (three h d) -> b s three h d`` on each rank). A shard's rows are therefore
  ``[q; k; v]`` *of its own heads*: view as (3, heads / tp, head_dim, hidden). Merging stacks the
  shards' q parts, then k, then v; a tp=1 file is the plain (3, heads, head_dim, hidden) layout.
* ``blocks.{i}.mixer.out_proj.weight``: row-parallel, split on the input dim; ``out_proj.bias``
  is added once, so only tp rank 0 stores it.
* ``blocks.{i}.mlp.w1 / w2 / w3`` = gate / up / down; w1, w2 split on the output dim, w3 (row-
  parallel) on the input dim. ``norm1`` / ``norm2`` (pre-attention / pre-MLP) are replicated.
* ``norm.weight`` and ``head.weight`` (split on the vocab dim) live on the last stage.
* Block indices restart at 0 on every stage: stage p's block i is layer i + (blocks of stages < p).
  Writing, layers are split as the original trainer's uniform partition does (later stages take
  the remainder), so it loads them; reading, each stage's count comes from its file.
* ``blocks.{i}.mixer.rotary_emb.inv_freq``: a persistent buffer the trainer saves; recomputed,
  ignored on read, written for the trainer's strict loads.

The format has no grouped-query attention and no MLP bias; a model without attention biases is
written with zero biases (exactly the same function).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping

import torch

from internlm.components.model.transformer import TransformerConfig
from internlm.errors import ConfigError
from internlm.interop.hf_config import refuse_differences
from internlm.interop.safetensors_io import load_torch_file
from internlm.interop.staging import staged_folder

log = logging.getLogger("internlm")
SHARD_NAME = re.compile(r"^model_tp(\d+)_pp(\d+)\.pt$")
BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
PREFIX = "model."
# Block tensors whose rank-0 copy is the whole tensor.
REPLICATED_OR_RANK0 = ("mixer.out_proj.bias", "norm1.weight", "norm2.weight", "mixer.rotary_emb.inv_freq")
EMBEDDING_KEYS = ("embedding.weight", "embedding.word_embeddings.weight")  # v0.2, later versions


# ---------------------------------------------------------------------------------------- reading


def load_internlm_checkpoint(
    folder: str | Path, config: TransformerConfig | None = None, where: str = "model.init_from"
) -> dict[str, torch.Tensor]:
    """Our state dict from every ``model_tp*_pp*.pt`` in ``folder``, whatever the tp/pp layout.

    With ``config``, the folder's ``model_config.pt`` (when there is one) must describe the same
    network (`check_model_config`: heads and norm eps change the logits but no tensor's shape), and
    attention biases the model does not have are dropped when they are all zero (as
    `save_internlm_checkpoint` writes them for a bias-free model); non-zero ones are kept, for
    `load_into` to report."""
    folder = Path(folder).expanduser()
    if config is not None:
        check_model_config(folder, config, where)
    grid = _shard_grid(folder)
    tp, pp = len(grid), len(grid[0])
    state: dict[str, torch.Tensor] = {}
    offset = 0
    for stage in range(pp):
        shards = [_strip_prefix(load_torch_file(grid[rank][stage])) for rank in range(tp)]
        blocks = _stage_block_count(shards, grid, stage)
        state.update(_merge_stage(shards, offset, grid[0][stage]))
        offset += blocks
    return _drop_zero_biases(state, config) if config is not None else state


MODEL_CONFIG = "model_config.pt"


def check_model_config(folder: Path, config: TransformerConfig, where: str) -> None:
    """Refuse a checkpoint whose ``model_config.pt`` describes another network than ``config``,
    naming each field and the override that matches the checkpoint."""
    path = folder / MODEL_CONFIG
    if not path.is_file():
        log.warning("%s has no %s: the number of heads and the norm eps cannot be checked against the config", folder, MODEL_CONFIG)
        return
    saved = load_torch_file(path)
    if not isinstance(saved, Mapping):
        raise ConfigError(f"{path} is not a dict of model settings", where=where, fix="point at the trainer's checkpoint folder")
    if str(saved.get("norm_type", "rmsnorm")).lower() != "rmsnorm":
        raise ConfigError(
            f"{path} describes a {saved['norm_type']} model; this project's models use RMSNorm",
            where=where,
            fix="convert a checkpoint trained with norm_type='rmsnorm'",
        )
    diffs = []
    for theirs, ours, value in _saved_fields(saved, config):
        if value is not None and not _same(ours(config), value):
            diffs.append((theirs, ours(config), value))
    refuse_differences(diffs, where, source=str(path))


def _saved_fields(saved: Mapping, config: TransformerConfig) -> list:
    """(our field, how to read it from a config, the checkpoint's value or None) per recorded setting."""
    def get(name, kind):
        return kind(saved[name]) if saved.get(name) is not None else None

    # mlp_ratio is left to the shapes: the trainer rounds the width it gives (load_into names it)
    return [
        ("num_layers", lambda c: c.num_layers, get("num_layers", int)),
        ("hidden_size", lambda c: c.hidden_size, get("hidden_size", int)),
        ("attention.num_heads", lambda c: c.attention.num_heads, get("num_attention_heads", int)),
        ("vocab_size", lambda c: c.vocab_size, get("vocab_size", int)),
        ("norm.eps", lambda c: float(c.norm.eps), get("layer_norm_epsilon", float)),
    ]


def _same(ours, theirs) -> bool:
    return math.isclose(ours, theirs, rel_tol=1e-6) if isinstance(theirs, float) else ours == theirs


def _drop_zero_biases(state: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
    absent = () if config.attention.qkv_bias else ("q_proj.bias", "k_proj.bias", "v_proj.bias")
    absent += () if config.attention.out_bias else ("o_proj.bias",)
    return {k: v for k, v in state.items() if not (absent and k.endswith(absent) and not v.any())}


def _shard_grid(folder: Path) -> list[list[Path]]:
    """grid[t][p] = path; every (t, p) of the layout must be present."""
    found = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        match = SHARD_NAME.match(path.name)
        if match:
            found[int(match[1]), int(match[2])] = path
    if not found:
        raise ConfigError(
            f"no model_tp*_pp*.pt files in {folder}",
            where="model.init_from",
            fix="point model.init_from=internlm:<dir> at the folder of an InternLM-format checkpoint",
        )
    tp = 1 + max(t for t, _ in found)
    pp = 1 + max(p for _, p in found)
    missing = [f"model_tp{t}_pp{p}.pt" for t in range(tp) for p in range(pp) if (t, p) not in found]
    if missing:
        raise ConfigError(
            f"incomplete InternLM checkpoint (tp={tp}, pp={pp}) in {folder}: missing {', '.join(missing)}",
            where="model.init_from",
            fix="copy every model_tp*_pp*.pt file of the checkpoint",
        )
    return [[found[t, p] for p in range(pp)] for t in range(tp)]


def _strip_prefix(shard: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in shard.items()}


def _stage_block_count(shards: list[dict[str, torch.Tensor]], grid: list[list[Path]], stage: int) -> int:
    counts = {1 + max((int(m[1]) for k in shard if (m := BLOCK_KEY.match(k))), default=-1) for shard in shards}
    if len(counts) != 1:
        raise ConfigError(
            f"the tensor-parallel files of stage {stage} hold different numbers of blocks: {sorted(counts)}",
            where=str(grid[0][stage].parent),
            fix="the checkpoint is inconsistent; use the files of one save",
        )
    return counts.pop()


def _merge_stage(shards: list[dict[str, torch.Tensor]], offset: int, where: Path) -> dict[str, torch.Tensor]:
    first = shards[0]
    out: dict[str, torch.Tensor] = {}
    for key in first:
        block = BLOCK_KEY.match(key)
        if key == "norm.weight" or (block and block[2] in REPLICATED_OR_RANK0):
            parts = [first[key]]  # the same on every rank, or (out_proj.bias) only on rank 0
        else:
            parts = _all_ranks(shards, key, where)
        if block:
            out.update(_merge_block_tensor(offset + int(block[1]), block[2], parts, where))
        elif key in EMBEDDING_KEYS:
            out["embed_tokens.weight"] = torch.cat(parts, dim=1)
        elif key == "head.weight":
            out["lm_head.weight"] = torch.cat(parts, dim=0)
        elif key == "norm.weight":
            out["norm.weight"] = parts[0]
        else:
            raise _unknown(key, where)
    return out


def _all_ranks(shards: list[dict[str, torch.Tensor]], key: str, where: Path) -> list[torch.Tensor]:
    missing = [rank for rank, shard in enumerate(shards) if key not in shard]
    if missing:
        raise ConfigError(
            f"{key!r} is on tensor rank 0 but not on rank(s) {missing} of {where.parent}",
            where="model.init_from",
            fix="the checkpoint is inconsistent; use the files of one save",
        )
    return [shard[key] for shard in shards]


def _merge_block_tensor(layer: int, local: str, parts: list[torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    name = f"layers.{layer}."
    attn = name + "self_attn."
    if local in ("mixer.Wqkv.weight", "mixer.Wqkv.bias"):
        kind = local.rsplit(".", 1)[1]
        # Each shard: [q; k; v] of its own heads, so view (3, rows / 3, ...) and join on the heads.
        q, k, v = torch.cat([p.reshape(3, p.shape[0] // 3, *p.shape[1:]) for p in parts], dim=1).unbind(0)
        return {f"{attn}q_proj.{kind}": q, f"{attn}k_proj.{kind}": k, f"{attn}v_proj.{kind}": v}
    simple = {
        "mixer.out_proj.weight": (f"{attn}o_proj.weight", 1),
        "mixer.out_proj.bias": (f"{attn}o_proj.bias", None),
        "mlp.w1.weight": (f"{name}mlp.gate_proj.weight", 0),
        "mlp.w2.weight": (f"{name}mlp.up_proj.weight", 0),
        "mlp.w3.weight": (f"{name}mlp.down_proj.weight", 1),
        "norm1.weight": (f"{name}input_layernorm.weight", None),
        "norm2.weight": (f"{name}post_attention_layernorm.weight", None),
    }
    if local == "mixer.rotary_emb.inv_freq":
        return {}
    if local not in simple:
        raise _unknown(f"blocks.N.{local}", where)
    ours, dim = simple[local]
    return {ours: parts[0] if dim is None else torch.cat(parts, dim=dim)}


def _unknown(key: str, where: Path) -> ConfigError:
    return ConfigError(
        f"unknown key {key!r} in {where}: not part of the InternLM v1 model layout",
        where="model.init_from",
        fix="only InternLM v1 (fused Wqkv) checkpoints are supported; InternLM2 uses another layout",
    )


# ---------------------------------------------------------------------------------------- writing


def stage_layer_counts(num_layers: int, pp: int) -> list[int]:
    """The original trainer's uniform partition: equal parts, the last stages one more."""
    base, extra = divmod(num_layers, pp)
    return [base + (stage >= pp - extra) for stage in range(pp)]


def save_internlm_checkpoint(
    state: Mapping[str, torch.Tensor], config: TransformerConfig, folder: str | Path, tp: int = 1, pp: int = 1
) -> list[Path]:
    """Write our state dict as ``model_tp{t}_pp{p}.pt`` files (plus ``model_config.pt``, which the
    original convert2hf tool reads) in the new folder ``folder``; returns the shard paths."""
    _check_writable(config, tp, pp)
    counts = stage_layer_counts(config.num_layers, pp)
    first_layers = [sum(counts[:stage]) for stage in range(pp)]
    paths = []
    with staged_folder(folder, where="task.dir") as staging:
        for stage in range(pp):
            for rank in range(tp):
                shard = _stage_shard(state, config, rank, tp, stage, pp, first_layers[stage], counts[stage])
                torch.save({PREFIX + k: v for k, v in shard.items()}, staging / f"model_tp{rank}_pp{stage}.pt")
                paths.append(Path(folder).expanduser().absolute() / f"model_tp{rank}_pp{stage}.pt")
        torch.save(_model_config(config), staging / "model_config.pt")
    return paths


def _check_writable(config: TransformerConfig, tp: int, pp: int) -> None:
    attention = config.attention
    if (attention.num_kv_heads or attention.num_heads) != attention.num_heads:
        raise ConfigError(
            "the InternLM format has no grouped-query attention (num_kv_heads < num_heads)",
            where="model.attention.num_kv_heads",
            fix="export this model to Hugging Face format instead (task=export_hf)",
        )
    if config.mlp.bias:
        raise ConfigError("the InternLM format has no MLP biases", where="model.mlp.bias",
                          fix="export this model to Hugging Face format instead (task=export_hf)")
    sizes = {"num_heads": attention.num_heads, "hidden_size": config.hidden_size,
             "mlp.intermediate_size": config.mlp.intermediate_size, "vocab_size": config.vocab_size}
    uneven = [f"{name}={size}" for name, size in sizes.items() if size % tp]
    if tp < 1 or uneven:
        raise ConfigError(f"tp={tp} does not divide {', '.join(uneven) or 'anything'}", where="tp",
                          fix="choose a tensor-parallel size dividing heads, hidden, FFN and vocab sizes")
    if not 1 <= pp <= config.num_layers:
        raise ConfigError(f"pp={pp} must be between 1 and num_layers={config.num_layers}", where="pp",
                          fix="choose fewer pipeline stages")


def _stage_shard(
    state: Mapping[str, torch.Tensor], config: TransformerConfig, rank: int, tp: int, stage: int, pp: int,
    first_layer: int, layers: int,
) -> dict[str, torch.Tensor]:
    """One file's tensors, each cloned: torch.save of a view would write its whole storage."""

    def take(key: str) -> torch.Tensor:
        if key in state:
            return state[key]
        if key.endswith("_proj.bias"):  # a bias the model lacks is a zero bias: the same function
            weight = take(key.removesuffix("bias") + "weight")
            return torch.zeros(weight.shape[0], dtype=weight.dtype)
        if key == "lm_head.weight" and config.tie_embeddings:
            return state["embed_tokens.weight"]
        raise ConfigError(f"the state dict lacks {key!r}", where="save_internlm_checkpoint",
                          fix="pass the full state dict of a model built from this config")

    def piece(key: str, dim: int) -> torch.Tensor:
        return take(key).chunk(tp, dim=dim)[rank].clone()

    out: dict[str, torch.Tensor] = {}
    if stage == 0:
        out["embedding.weight"] = piece("embed_tokens.weight", 1)
    head_dim = config.hidden_size // config.attention.num_heads
    inv_freq = 1.0 / (config.attention.rotary.base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    for local in range(layers):
        ours, theirs = f"layers.{first_layer + local}.", f"blocks.{local}."
        attn = ours + "self_attn."
        for kind in ("weight", "bias"):
            out[f"{theirs}mixer.Wqkv.{kind}"] = torch.cat([piece(f"{attn}{x}_proj.{kind}", 0) for x in "qkv"])
        out[f"{theirs}mixer.out_proj.weight"] = piece(f"{attn}o_proj.weight", 1)
        if rank == 0:
            out[f"{theirs}mixer.out_proj.bias"] = take(f"{attn}o_proj.bias").clone()
        out[f"{theirs}mixer.rotary_emb.inv_freq"] = inv_freq.clone()
        out[f"{theirs}norm1.weight"] = take(f"{ours}input_layernorm.weight").clone()
        out[f"{theirs}norm2.weight"] = take(f"{ours}post_attention_layernorm.weight").clone()
        out[f"{theirs}mlp.w1.weight"] = piece(f"{ours}mlp.gate_proj.weight", 0)
        out[f"{theirs}mlp.w2.weight"] = piece(f"{ours}mlp.up_proj.weight", 0)
        out[f"{theirs}mlp.w3.weight"] = piece(f"{ours}mlp.down_proj.weight", 1)
    if stage == pp - 1:
        out["norm.weight"] = take("norm.weight").clone()
        out["head.weight"] = piece("lm_head.weight", 0)
    return out


def _model_config(config: TransformerConfig) -> dict:
    """The trainer's model settings, as plain values (read back with weights_only=True)."""
    return {
        "num_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.attention.num_heads,
        "vocab_size": config.vocab_size,
        "mlp_ratio": config.mlp.intermediate_size / config.hidden_size,
        "layer_norm_epsilon": float(config.norm.eps),
        "norm_type": "rmsnorm",
        "embed_split_hidden": True,
        "num_chunks": 1,
    }
