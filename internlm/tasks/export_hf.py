"""Export a checkpoint as a Hugging Face folder that stock transformers, vLLM and LMDeploy load.

``python -m internlm task=export_hf checkpoint=<run or checkpoint folder> task.dir=<dir>``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from internlm.components.adapter.lora import merged_state_dict
from internlm.components.tokenizer.chat_template import JINJA_CHAT_TEMPLATE
from internlm.errors import ConfigError
from internlm.interop import export_hf
from internlm.interop.peft_export import export_peft_adapter
from internlm.registry import register
from internlm.runtime.checkpoint import find_checkpoint
from internlm.runtime.saved_run import checkpoint_model_config, load_model_state, model_tensors, saved_lora
from internlm.tasks.base import RunContext, Task


@dataclass
class ExportHFConfig:
    dir: str = ""  # the folder to write (must not exist, or be empty)
    dtype: str = "bfloat16"  # bfloat16 | float16 | float32 weights in the export
    max_shard_gb: float = 2.0  # safetensors shard size
    chat_template: bool = True  # put InternLM's chat template into tokenizer_config.json
    adapter: str = "merge"  # a LoRA run: merge (fold into the weights) | peft (a PEFT adapter folder only) | none (base weights)


ADAPTER_MODES = ("merge", "peft", "none")


def without_adapters(source):
    """The base model's tensors of a checkpoint source (LoRA tensors left out)."""
    return lambda: ((name, tensor) for name, tensor in source() if ".lora_" not in name)


@register("task", "export_hf", ExportHFConfig)
class ExportHF(Task):
    """Checkpoint -> LlamaForCausalLM folder (safetensors, config, tokenizer, chat template)."""

    needs_tokenizer = False  # the checkpoint's own tokenizer is exported

    def run(self, ctx: RunContext) -> Path:
        export = self.config
        if not ctx.config.checkpoint:
            raise ConfigError("task=export_hf needs a checkpoint", where="checkpoint", fix="add checkpoint=<run or checkpoint folder>")
        if not export.dir:
            raise ConfigError("task=export_hf needs a destination", where="task.dir", fix="add task.dir=<new folder>")
        found = find_checkpoint(ctx.config.checkpoint, Path(ctx.config.checkpoint))
        model_cfg, tokenizer = checkpoint_model_config(found)
        if export.adapter not in ADAPTER_MODES:
            raise ConfigError(f"unknown task.adapter '{export.adapter}'", where="task.adapter", fix=f"choose one of {', '.join(ADAPTER_MODES)}")
        lora = saved_lora(found)
        if export.adapter == "peft":
            if lora is None:
                raise ConfigError(
                    f"{found} was trained without LoRA: there is no adapter to export",
                    where="task.adapter",
                    fix="export the full model with task.adapter=merge (or none)",
                )
            out = export_peft_adapter(
                load_model_state(found), export.dir, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, base_model=str(found)
            )
            print(f"exported the LoRA adapter of {found} to {out}")
            return out
        state = model_tensors(found)
        if lora is not None:
            state = merged_state_dict(load_model_state(found), lora.alpha / lora.rank) if export.adapter == "merge" else without_adapters(state)
        out = export_hf(
            state,
            model_cfg,
            export.dir,
            tokenizer_model=tokenizer.model_path,
            chat_template=JINJA_CHAT_TEMPLATE if export.chat_template else None,
            dtype=export.dtype,
            max_shard_bytes=int(export.max_shard_gb * 1024**3),
        )
        print(f"exported {found} to {out}")
        return out
