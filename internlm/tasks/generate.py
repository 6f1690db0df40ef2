"""Continue a prompt with a trained model: `task=generate checkpoint=<run, checkpoint or hf:dir> task.prompt=...`."""

from __future__ import annotations

from dataclasses import dataclass

from internlm.errors import ConfigError
from internlm.inference import SamplingParams, load_engine
from internlm.inference.loading import INTERNLM_PREFIX
from internlm.registry import register
from internlm.tasks.base import RunContext, Task


@dataclass
class GenerateConfig:
    prompt: str = "To be, or not to be"  # text to continue
    max_new_tokens: int = 64  # upper bound on generated tokens
    temperature: float = 0.0  # 0 = greedy; InternLM's chat default is 0.8
    top_p: float = 0.8  # nucleus sampling mass (used when temperature > 0)
    top_k: int = 0  # keep only the k likeliest tokens (0 = off)
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens (1 = off)
    seed: int = 0  # sampling seed
    device: str = "auto"  # auto (cuda if present) | cpu | cuda[:N]
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp16 | fp32


def require_checkpoint(ctx: RunContext, task: str) -> str:
    if not ctx.config.checkpoint:
        raise ConfigError(f"task={task} needs a checkpoint", where="checkpoint",
                          fix="add checkpoint=<run folder, checkpoint folder, hf:<exported folder> or internlm:<shards folder>>")
    return ctx.config.checkpoint


def open_engine(ctx: RunContext, task: str, device: str, dtype: str):
    """The engine over `checkpoint=`; an internlm: folder (no config inside) uses the run's
    configured model and tokenizer."""
    source = require_checkpoint(ctx, task)
    extra = {}
    if source.startswith(INTERNLM_PREFIX):
        extra = {"model_config": ctx.config.model, "tokenizer": ctx.parts.tokenizer}
    return load_engine(source, device=device, dtype=dtype, max_batch=1, **extra)


@register("task", "generate", GenerateConfig)
class Generate(Task):
    """Load a checkpoint and print a greedy or sampled continuation of a prompt."""

    needs_tokenizer = False  # the checkpoint's own tokenizer is used

    def run(self, ctx: RunContext) -> str:
        cfg = self.config
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty, seed=cfg.seed).validate("task")
        with open_engine(ctx, "generate", cfg.device, cfg.dtype) as engine:
            params = SamplingParams(**{**params.__dict__, "stop_ids": (engine.tokenizer.eos_id,)})
            text = engine.generate([engine.tokenizer.encode(cfg.prompt, bos=True)], params)[0].text
        print(cfg.prompt + text)
        return text
