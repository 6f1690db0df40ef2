"""Reading what a run saved: a checkpoint's typed configs, tokenizer and full model tensors.

Configs read back from a checkpoint only ever become registered dataclasses: nothing in them is
imported or executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from internlm import registry
from internlm.components.adapter.lora import merged_state_dict
from internlm.errors import ConfigError
from internlm.interop.dcp_source import dcp_model_tensors
from internlm.runtime import checkpoint as ckpt


def typed_section(group: str, name: str, values: dict) -> Any:
    """A saved config section as its component's dataclass (unknown keys are refused)."""
    schema = OmegaConf.structured(registry.get(group, name).config)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, values))
    except Exception as exc:
        raise ConfigError(f"checkpoint config section '{group}' does not fit {name}: {exc}") from None


def model_tensors(checkpoint: Path):
    """A source of (name, full tensor) for the model of a checkpoint, read one tensor at a time
    (no process group, no gathering on a GPU, whatever world size wrote it)."""
    return dcp_model_tensors(checkpoint / "state")


def load_model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict from a checkpoint, on the CPU."""
    return dict(model_tensors(checkpoint)())


def checkpoint_model_config(checkpoint: Path) -> tuple[Any, Any]:
    """(typed model config, tokenizer) as the checkpoint was trained with."""
    names = ckpt.read_meta(checkpoint)["components"]
    saved = ckpt.read_config(checkpoint)
    model_cfg = typed_section("model", names["model"], saved["model"])
    model_cfg.init_from = None  # the checkpoint holds the weights
    tokenizer = registry.build(typed_section("tokenizer", names["tokenizer"], saved["tokenizer"]))
    return model_cfg, tokenizer


def saved_lora(checkpoint: Path):
    """The LoRA config a checkpoint was trained with, or None (trained without adapter=lora)."""
    name = ckpt.read_meta(checkpoint)["components"].get("adapter")
    if name != "lora":
        return None
    return typed_section("adapter", name, ckpt.read_config(checkpoint)["adapter"])


def inference_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's model runs with: adapters trained with LoRA folded in
    (W + B A x alpha / rank), so inference needs no adapter code."""
    state = load_model_state(checkpoint)
    lora = saved_lora(checkpoint)
    return merged_state_dict(state, lora.alpha / lora.rank) if lora is not None else state


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) from a checkpoint folder or the newest one of a run folder."""
    checkpoint = ckpt.find_checkpoint(str(path), Path(path))
    model_cfg, tokenizer = checkpoint_model_config(checkpoint)
    with torch.device("meta"):
        model = registry.build(model_cfg)
    model = model.to_empty(device=device)
    model.rotary.reset_parameters()  # buffers are not in the state dict
    missing, unexpected = model.load_state_dict(inference_state(checkpoint), strict=False)
    missing = [k for k in missing if not (model_cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {checkpoint} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval(), tokenizer
