"""Export our model as a Hugging Face ``LlamaForCausalLM`` folder that stock transformers, vLLM and
LMDeploy load without trust_remote_code.

The folder: ``config.json``, safetensors weights (sharded with an index when large),
``generation_config.json`` (stops at eos and ``<eoa>``) and, given the sentencepiece model, the
tokenizer with InternLM's chat template. Tensors stream in one at a time (from a state dict or a
generator reading a sharded checkpoint) and go to disk shard by shard, so memory holds the source
plus at most one shard of converted copies. The folder is written under a temporary name and
renamed when whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Mapping, Union

import torch

from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.components.tokenizer.chat_template import JINJA_CHAT_TEMPLATE
from internlm.errors import ConfigError
from internlm.interop.hf_config import HEAD, hf_config_dict, to_hf_name
from internlm.interop.hf_tokenizer import tokenizer_ids, write_hf_tokenizer
from internlm.interop.load_state import check_fit
from internlm.interop.safetensors_io import ShardedSafetensorsWriter
from internlm.interop.staging import staged_folder

StateSource = Union[Mapping[str, torch.Tensor], Callable[[], Iterable[tuple[str, torch.Tensor]]]]

DEFAULT_CHAT_TEMPLATE = JINJA_CHAT_TEMPLATE
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


def export_hf(
    state: StateSource,
    config: TransformerConfig,
    out_dir: str | Path,
    *,
    tokenizer_model: str | Path | None = None,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    dtype: torch.dtype | str = torch.bfloat16,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """Write the Hugging Face folder ``out_dir`` (which must not exist or be empty); returns it.

    ``state``: our state dict, or a callable returning an iterable of (our name, full tensor), e.g.
    reading a sharded checkpoint one tensor at a time (DTensors are gathered one at a time).
    ``chat_template``: the Jinja template put in tokenizer_config.json (None: none).
    """
    dtype = _dtype(dtype)
    expected = _expected_shapes(config)
    ids = tokenizer_ids(Path(tokenizer_model).expanduser()) if tokenizer_model is not None else None
    if ids is not None and ids.vocab_size > config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {ids.vocab_size} tokens but the model only {config.vocab_size} embedding rows",
            where="model.vocab_size",
            fix="export with the tokenizer the model was trained with",
        )
    hf_config = hf_config_dict(
        config,
        dtype=dtype,
        bos_token_id=ids.bos_id if ids else 1,
        eos_token_id=ids.eos_id if ids else 2,
    )
    with staged_folder(out_dir, where="task.dir") as staging:
        _write_weights(state, expected, config.tie_embeddings, dtype, staging, max_shard_bytes)
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        stops = list(ids.stop_ids) if ids else [hf_config["eos_token_id"]]
        generation = {"bos_token_id": hf_config["bos_token_id"], "eos_token_id": stops if len(stops) > 1 else stops[0]}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if tokenizer_model is not None:
            write_hf_tokenizer(Path(tokenizer_model), staging, chat_template, config.attention.rotary.max_position)
    return Path(out_dir).expanduser().absolute()


def _write_weights(
    state: StateSource,
    expected: dict[str, tuple[int, ...]],
    tied: bool,
    dtype: torch.dtype,
    folder: Path,
    max_shard_bytes: int,
) -> None:
    """Stream tensors into shards, checking each name and shape on arrival and completeness at the end."""
    writer = ShardedSafetensorsWriter(folder, max_shard_bytes)
    seen: dict[str, torch.Size] = {}
    items = state.items() if isinstance(state, Mapping) else state()
    for name, tensor in items:
        _check_arrival(name, tuple(tensor.shape), expected)
        seen[name] = tensor.shape
        if tied and name == HEAD:
            continue  # transformers ties lm_head to the embedding itself
        if hasattr(tensor, "full_tensor"):  # a DTensor shard of a parallel run
            tensor = tensor.full_tensor()
        writer.add(to_hf_name(name), tensor.detach().to(device="cpu", dtype=dtype))
    required = {k: v for k, v in expected.items() if not (tied and k == HEAD)}
    missing = [k for k in required if k not in seen]
    if missing:
        check_fit(required, _shaped(seen), where="export")
    writer.close()


def _check_arrival(name: str, shape: tuple[int, ...], expected: dict[str, tuple[int, ...]]) -> None:
    if name not in expected:
        raise ConfigError(
            f"the checkpoint has {name!r}, which the configured model does not",
            where="export",
            fix="export with the model config the checkpoint was trained with",
        )
    if shape != expected[name]:
        raise ConfigError(
            f"{name} has shape {list(shape)}, the configured model expects {list(expected[name])}",
            where="export",
            fix="export with the model config the checkpoint was trained with",
        )


def _shaped(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Shape-only stand-ins, so check_fit can report without the tensors."""
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def _expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ConfigError(
            f"unknown export dtype {dtype!r}", where="task.dtype", fix=f"use one of: {', '.join(DTYPES)}"
        ) from None
