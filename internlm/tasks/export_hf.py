"""Export a checkpoint as a Hugging Face folder that stock transformers, vLLM and LMDeploy load.

``python -m internlm task=export_hf checkpoint=<run or checkpoint folder> task.dir=<dir>``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from internlm.components.tokenizer.chat_template import JINJA_CHAT_TEMPLATE
from internlm.errors import ConfigError
from internlm.interop import export_hf
from internlm.registry import register
from internlm.runtime.checkpoint import find_checkpoint
from internlm.runtime.saved_run import checkpoint_model_config, model_tensors
from internlm.tasks.base import RunContext, Task


@dataclass
class ExportHFConfig:
    dir: str = ""  # the folder to write (must not exist, or be empty)
    dtype: str = "bfloat16"  # bfloat16 | float16 | float32 weights in the export
    max_shard_gb: float = 2.0  # safetensors shard size
    chat_template: bool = True  # put InternLM's chat template into tokenizer_config.json


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
        out = export_hf(
            model_tensors(found),
            model_cfg,
            export.dir,
            tokenizer_model=tokenizer.model_path,
            chat_template=JINJA_CHAT_TEMPLATE if export.chat_template else None,
            dtype=export.dtype,
            max_shard_bytes=int(export.max_shard_gb * 1024**3),
        )
        print(f"exported {found} to {out}")
        return out
