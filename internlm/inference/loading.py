"""`load_engine(source)`: a run folder, a checkpoint folder or an ``hf:<dir>`` export onto a device.

Every problem with the source is found before a weight is read: the folder must exist and hold a
complete checkpoint, or (``hf:``) a config.json, weights and a sentencepiece ``tokenizer.model``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from internlm import registry
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.errors import ConfigError
from internlm.inference.engine import Engine
from internlm.interop import load_hf_checkpoint, load_internlm_checkpoint, load_into, transformer_config_from_hf
from internlm.interop.internlm_format import SHARD_NAME as SHARD
from internlm.runtime import checkpoint as ckpt
from internlm.runtime.saved_run import checkpoint_model_config, inference_state

HF_PREFIX = "hf:"
INTERNLM_PREFIX = "internlm:"
FIX = ("pass a run folder, a checkpoint folder (…/checkpoints/step-N), hf:<exported folder> or "
       "internlm:<folder of model_tp*_pp*.pt>")


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{device}'", where="device", fix="use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available", where="device", fix="use device=auto or cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    choices = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
               "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64}
    if dtype not in choices:
        raise ConfigError(f"unknown dtype '{dtype}'", where="dtype", fix=f"use auto or one of: {', '.join(choices)}")
    return choices[dtype]


def model_id_of(source: str) -> str:
    """The run or export folder's name (a checkpoint folder names its run)."""
    for prefix in (HF_PREFIX, INTERNLM_PREFIX):
        source = source.removeprefix(prefix)
    path = Path(source).expanduser().resolve()
    if (path / "meta.json").is_file() and path.parent.name == "checkpoints":
        return path.parent.parent.name
    return path.name


def load_model(source: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
               model_config=None, tokenizer=None):
    """(model in eval mode on the device, tokenizer) from any source `load_engine` takes."""
    source = str(source)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if source.startswith(HF_PREFIX):
        model_cfg, tokenizer, state = _hf_source(Path(source[len(HF_PREFIX):]).expanduser())
    elif source.startswith(INTERNLM_PREFIX):
        model_cfg, state = _internlm_source(Path(source[len(INTERNLM_PREFIX):]).expanduser(), model_config, tokenizer)
    else:
        model_cfg, tokenizer, state = _checkpoint_source(source)
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.init_from = None
    with torch.device("meta"):
        model = registry.build(model_cfg).to(dtype)
    model = model.to_empty(device=device)
    # Rotary frequencies stay fp32 (bf16 angles drift at long positions); buffers are not in a state dict.
    model.rotary.inv_freq = torch.empty(model.rotary.inv_freq.shape, dtype=torch.float32, device=device)
    model.rotary.reset_parameters()
    load_into(model, state(), where=source)
    return model.eval(), tokenizer


def load_engine(source: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                max_batch: int = 16, max_context: int | None = None, compile: bool | str = "auto",
                model_config=None, tokenizer=None, cuda_graphs: bool | str = "auto", prefill_chunk: int = 1024,
                fuse_projections: bool | str = "auto") -> Engine:
    """An Engine serving the model of `source`; a missing or bad source is a ConfigError before any
    weight loads. `max_batch` = cache slots (requests decoded together); `max_context` = the
    longest prompt + completion (default: the model's trained rotary range). An ``internlm:``
    folder (the original trainer's shards) holds no config: pass `model_config` (a
    TransformerConfig) and `tokenizer`. `compile`, `cuda_graphs` and `fuse_projections` ("auto": on
    CUDA) choose how decode runs (decode_runner.py); `prefill_chunk` = prompt tokens per prefill step."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch={max_batch!r} must be an integer >= 1", where="max_batch", fix="e.g. max_batch=16")
    model, tokenizer = load_model(source, device, dtype, model_config, tokenizer)
    return Engine(model, tokenizer, model_id_of(str(source)), max_context=max_context, max_batch=max_batch,
                  compile=compile, cuda_graphs=cuda_graphs, prefill_chunk=prefill_chunk,
                  fuse_projections=fuse_projections)


def _checkpoint_source(source: str):
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"checkpoint '{source}' does not exist", where="checkpoint", fix=FIX)
    checkpoint = ckpt.find_checkpoint(str(path), path)
    model_cfg, tokenizer = checkpoint_model_config(checkpoint)
    return model_cfg, tokenizer, lambda: inference_state(checkpoint)


def _internlm_source(folder: Path, model_config, tokenizer):
    where = f"{INTERNLM_PREFIX}{folder}"
    if not folder.is_dir() or not any(SHARD.match(p.name) for p in folder.iterdir()):
        raise ConfigError(f"no model_tp*_pp*.pt files in {folder}", where=where,
                          fix="point internlm:<dir> at a folder of the original trainer's checkpoint shards")
    if model_config is None or tokenizer is None:
        raise ConfigError("an internlm: folder has no model config or tokenizer", where=where,
                          fix="give the model and tokenizer it was trained with (e.g. model=internlm_7b tokenizer.path=...)")
    model_config = copy.deepcopy(model_config)
    return model_config, lambda: load_internlm_checkpoint(folder, model_config)


def _hf_source(folder: Path):
    where = f"{HF_PREFIX}{folder}"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"no config.json in {folder}", where=where, fix="point hf:<dir> at an exported folder (task=export_hf)")
    tokenizer_file = folder / "tokenizer.model"
    if not tokenizer_file.is_file():
        raise ConfigError(f"no tokenizer.model in {folder}", where=where,
                          fix="export with task=export_hf, or copy the sentencepiece tokenizer.model into the folder")
    tokenizer = SentencePieceTokenizer(SentencePieceConfig(path=str(tokenizer_file)))
    config_file = folder / "config.json"
    try:
        config = transformer_config_from_hf(json.loads(config_file.read_text()), where=str(config_file))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_file} is not JSON: {exc}", where=where, fix="re-export the folder") from None
    return config, tokenizer, lambda: load_hf_checkpoint(folder)[1]
