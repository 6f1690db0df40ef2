"""Read a Hugging Face Llama-layout checkpoint (Llama, InternLM v1) as our config and state dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import torch

from internlm.components.model.transformer import TransformerConfig
from internlm.errors import ConfigError
from internlm.interop.hf_config import EMBEDDING, HEAD, IGNORED_HF_SUFFIXES, from_hf_name, transformer_config_from_hf
from internlm.interop.load_state import LoadReport, load_into
from internlm.interop.safetensors_io import read_weights

__all__ = ["load_hf_checkpoint", "hf_state_to_ours", "load_into", "LoadReport"]


def load_hf_checkpoint(folder: str | Path) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """(our config, our state dict) of the checkpoint in ``folder``: ``config.json`` plus safetensors
    or ``pytorch_model*.bin`` weights, whole or sharded. Tensors keep the checkpoint's dtype."""
    folder = Path(folder).expanduser()
    config_path = folder / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no config.json in {folder}",
            where="model.init_from",
            fix="point model.init_from=hf:<dir> at a Hugging Face model folder (config.json + weights)",
        ) from None
    config = transformer_config_from_hf(hf_config, where=str(config_path))
    return config, hf_state_to_ours(read_weights(folder), config)


def hf_state_to_ours(
    tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor], config: TransformerConfig
) -> dict[str, torch.Tensor]:
    """Rename HF tensors to ours; a tied model's head is its embedding, as in transformers."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    state = {from_hf_name(name): tensor for name, tensor in items if not name.endswith(IGNORED_HF_SUFFIXES)}
    if config.tie_embeddings and EMBEDDING in state:
        state[HEAD] = state[EMBEDDING]
    return state
