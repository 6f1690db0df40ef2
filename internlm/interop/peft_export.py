"""LoRA adapters as a PEFT adapter folder (what `peft.PeftModel.from_pretrained` and vLLM load).

    adapter_config.json           peft_type LORA, r, lora_alpha, target_modules, task_type CAUSAL_LM, ...
    adapter_model.safetensors     base_model.model.<HF name>.lora_A.weight / lora_B.weight

Our module names are Hugging Face Llama's (`layers.0.self_attn.q_proj`), so an adapter tensor is
named by prefixing `base_model.model.model.` (the head would be `base_model.model.lm_head`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from internlm.errors import ConfigError
from internlm.interop.hf_config import to_hf_name
from internlm.interop.staging import staged_folder

PEFT_PREFIX = "base_model.model."


def adapter_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our LoRA tensors (`...q_proj.lora_A.weight`) under PEFT's names."""
    return {
        PEFT_PREFIX + to_hf_name(name): tensor.detach().to("cpu").contiguous()
        for name, tensor in state.items()
        if ".lora_A." in name or ".lora_B." in name
    }


def peft_adapter_config(
    *, rank: int, alpha: float, dropout: float, target_modules: list[str], base_model: str
) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(target_modules),
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }


def export_peft_adapter(
    state: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    base_model: str = "",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the adapter folder `out_dir` (must not exist or be empty) from a state dict that holds
    LoRA tensors; refuses one without any (a run trained without adapter=lora)."""
    tensors = adapter_tensors(state)
    if not tensors:
        raise ConfigError(
            "the checkpoint holds no LoRA adapter, so there is no adapter folder to export",
            where="task.adapter",
            fix="export the full model with task.adapter=none, or train with adapter=lora",
        )
    targets = sorted({name.split(".lora_")[0].rsplit(".", 1)[-1] for name in tensors})
    config = peft_adapter_config(rank=rank, alpha=alpha, dropout=dropout, target_modules=targets, base_model=base_model)
    with staged_folder(out_dir, where="task.dir") as staging:
        save_file({k: v.to(dtype) for k, v in tensors.items()}, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(out_dir).expanduser().absolute()
