"""Supervised fine-tuning: the shared fit loop with objective=next_token on chat data (data=sft),
usually from earlier weights (`model.init_from=run:|hf:|internlm:`)."""

from __future__ import annotations

from dataclasses import dataclass

from internlm.components.data.sft import SFTData
from internlm.components.objective.next_token import NextToken
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.runtime.fit import fit
from internlm.tasks.base import RunContext
from internlm.tasks.pretrain import TrainingTask


@dataclass
class SFTConfig:
    pass


@register("task", "sft", SFTConfig)
class SFT(TrainingTask):
    """Fine-tune on chat transcripts: loss on the assistant's tokens and <eoa> only."""

    def run(self, ctx: RunContext) -> dict:
        if not isinstance(ctx.parts.objective, NextToken):
            raise ConfigError("task=sft trains with objective=next_token", where="objective", fix="drop the objective override, or use task=dpo")
        if not isinstance(ctx.parts.data, SFTData):
            raise ConfigError("task=sft needs chat data", where="data", fix="use data=sft data.paths='[chats.jsonl]'")
        return fit(ctx)
