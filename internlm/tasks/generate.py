"""Continue a prompt with a trained model: `task=generate checkpoint=<run or checkpoint> task.prompt=...`."""

from __future__ import annotations

from dataclasses import dataclass

from internlm.errors import ConfigError
from internlm.registry import register
from internlm.runtime.generation import generate
from internlm.tasks.base import RunContext, Task


@dataclass
class GenerateConfig:
    prompt: str = "To be, or not to be"  # text to continue
    max_new_tokens: int = 64  # upper bound on generated tokens
    temperature: float = 0.0  # 0 = greedy; InternLM's chat default is 0.8
    top_p: float = 0.8  # nucleus sampling mass (used when temperature > 0)
    seed: int = 0  # sampling seed


@register("task", "generate", GenerateConfig)
class Generate(Task):
    needs_tokenizer = False  # the checkpoint brings its own

    """Load a checkpoint and print a greedy or sampled continuation of a prompt."""


    def run(self, ctx: RunContext) -> str:
        from internlm.runtime.saved_run import load

        if not ctx.config.checkpoint:
            raise ConfigError(
                "task=generate needs a checkpoint", where="checkpoint", fix="add checkpoint=<run folder or checkpoint folder>"
            )
        model, tokenizer = load(ctx.config.checkpoint)
        cfg = self.config
        new = generate(
            model,
            tokenizer.encode(cfg.prompt, bos=True),
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            stop_ids=(tokenizer.eos_id,),
            seed=cfg.seed,
        )
        text = tokenizer.decode(new)
        print(cfg.prompt + text)
        return text
