"""What a task receives: the typed config, the compiled plan, the run folder, and a workbench
that builds components on first use (a `task=plan` builds nothing, a pretrain builds it all)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from internlm.compile import Plan
from internlm.config import RootConfig
from internlm.runtime.workbench import Workbench


@dataclass
class RunContext:
    config: RootConfig  # typed, validated
    raw: DictConfig  # the same config as composed (saved beside checkpoints)
    plan: Plan
    run_dir: Path
    bench: Workbench

    @property
    def components(self) -> dict[str, str]:
        """Group -> registered component name, for every component group of the config."""
        from internlm import registry

        names = {}
        for group in ("task", "model", "tokenizer", "data", "optimizer", "scheduler", "loss", "strategy"):
            node = getattr(self.config, group)
            if node is not None:
                names[group] = registry.component_of(node).name
        return names


class Task(Protocol):
    def __init__(self, config: Any): ...

    def run(self, ctx: RunContext) -> Any: ...
