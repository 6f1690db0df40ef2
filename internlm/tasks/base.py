"""What a task receives: the typed config, the compiled plan, the run folder, and a workbench
that builds components on first use (a `task=plan` builds nothing, a pretrain builds it all)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the root config imports task modules, so no import cycle here
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
        from internlm.config import COMPONENT_GROUPS

        nodes = {group: getattr(self.config, group) for group in COMPONENT_GROUPS}
        return {group: registry.component_of(node).name for group, node in nodes.items() if node is not None}


class Task(Protocol):
    def __init__(self, config: Any): ...

    def run(self, ctx: RunContext) -> Any: ...
