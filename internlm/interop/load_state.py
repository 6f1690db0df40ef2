"""Copy an imported state dict into a model, or refuse with a report of everything that does not fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from internlm.errors import ConfigError

MAX_LISTED = 8  # keys named per kind of problem; the rest are counted


@dataclass(frozen=True)
class LoadReport:
    """What `load_into` copied."""

    tensors: int  # state-dict entries copied (a tied weight counts once)
    parameters: int  # numbers copied
    source_dtypes: tuple[str, ...]  # dtypes found in the checkpoint (cast to the model's on copy)

    def summary(self) -> str:
        return f"loaded {self.tensors} tensors ({self.parameters:,} numbers, from {'/'.join(self.source_dtypes)})"


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "model.init_from") -> LoadReport:
    """Copy ``state`` into ``model`` (materialized, not yet sharded) after checking it fits exactly:
    the same keys and shapes, and equal values for weights the model ties together."""
    targets = model.state_dict(keep_vars=True)
    check_fit({key: tuple(t.shape) for key, t in targets.items()}, state, where)
    _check_tied(targets, state, where)
    copied: set[int] = set()
    numbers = 0
    with torch.no_grad():
        for key, target in targets.items():
            if id(target) in copied:
                continue
            target.copy_(state[key])
            copied.add(id(target))
            numbers += target.numel()
    dtypes = tuple(sorted({str(t.dtype).removeprefix("torch.") for t in state.values()}))
    return LoadReport(tensors=len(copied), parameters=numbers, source_dtypes=dtypes)


def check_fit(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], where: str) -> None:
    """ConfigError naming every missing key, unexpected key and shape mismatch."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (model {list(shape)}, checkpoint {list(state[k].shape)})"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    problems = [
        _listed("missing from the checkpoint", missing),
        _listed("in the checkpoint but not in the model", unexpected),
        _listed("with other shapes", mismatched),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(
            "the checkpoint does not fit the model: " + "; ".join(problems),
            where=where,
            fix=_fix_hint(missing + unexpected, _shape_overrides(expected, state)),
        )


def _check_tied(targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str) -> None:
    by_tensor: dict[int, list[str]] = {}
    for key, target in targets.items():
        by_tensor.setdefault(id(target), []).append(key)
    for keys in by_tensor.values():
        first = state[keys[0]]
        for other in keys[1:]:
            if state[other] is not first and not torch.equal(state[other], first):
                raise ConfigError(
                    f"the model ties {' and '.join(keys)}, but the checkpoint has different values for them",
                    where=where,
                    fix="set model.tie_embeddings=false to load separate embedding and head weights",
                )


def _listed(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"{len(keys)} {what}: {', '.join(keys[:MAX_LISTED])}{more}"


# Our tensor names whose checkpoint shape gives a model field's value: (key suffix, dim, field).
SHAPE_FIELDS = (
    ("embed_tokens.weight", 0, "vocab_size"),
    ("embed_tokens.weight", 1, "hidden_size"),
    ("mlp.gate_proj.weight", 0, "mlp.intermediate_size"),
)


def _shape_overrides(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]) -> list[str]:
    """``model.<field>=<the checkpoint's value>`` for each field its tensor shapes pin down."""
    found: dict[str, int] = {}
    for suffix, dim, field in SHAPE_FIELDS:
        for key, shape in expected.items():
            if key.endswith(suffix) and key in state and tuple(state[key].shape) != tuple(shape):
                if state[key].shape[dim] != shape[dim]:
                    found[field] = int(state[key].shape[dim])
                break
    layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.split(".")[1].isdigit()}
    ours = {int(k.split(".")[1]) for k in expected if k.startswith("layers.") and k.split(".")[1].isdigit()}
    if layers and layers != ours and layers == set(range(len(layers))):
        found["num_layers"] = len(layers)
    out = [f"model.{field}={value}" for field, value in found.items()]
    key = next((k for k in expected if k.endswith("self_attn.k_proj.weight")), None)
    if key and key in state and tuple(state[key].shape) != tuple(expected[key]) and "hidden_size" not in found:
        out.append("model.attention.num_kv_heads (the checkpoint's k_proj has "
                   f"{state[key].shape[0]} rows, {state[key].shape[0]} / head_dim kv heads)")
    return out


def _fix_hint(keys: list[str], overrides: list[str] = ()) -> str:
    hints = []
    if any(k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in keys):
        hints.append("model.attention.qkv_bias")
    if any(k.endswith("o_proj.bias") for k in keys):
        hints.append("model.attention.out_bias")
    if any(k.startswith("layers.") and ".mlp." in k and k.endswith(".bias") for k in keys):
        hints.append("model.mlp.bias")
    if any(k.startswith("layers.") and not k.endswith(".bias") for k in keys):
        hints.append("model.num_layers")
    named = f" (check {', '.join(hints)})" if hints else ""
    values = f"set the checkpoint's values: {' '.join(overrides)}; " if overrides else ""
    return f"{values}configure the model as the checkpoint was trained{named}, or point at a checkpoint of this model"
