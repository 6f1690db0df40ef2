"""The task protocol: what a task declares it needs, and what it receives.

A task is a registered component (`task=<name>`, options under `task.*`). It declares, as class
attributes, what the program must prepare before it runs; the program asks these instead of
keeping lists of task names:

* `needs_tokenizer`: the configured tokenizer is built (and its vocabulary checked against the
  model) before the task runs.
* `trains`: the task runs the training loop, so the batch layout (global batch / micro batch /
  data-parallel ranks), the optimizer's schedule and the memory estimate are part of its plan.
  Tasks that only read a model (generate, export, serve, eval) are not checked against them.
* `allocates`: the task runs the plan on this machine, so a plan above the device's memory is
  refused (task=plan, which shows a plan for any machine, only warns).

`check_run_folder` runs after compile and before plan.yaml is written: a task refuses a run folder
it must not touch (pretraining over an earlier run's checkpoints) while nothing has been written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from internlm import registry
from internlm.config import COMPONENT_GROUPS, RootConfig
from internlm.errors import ConfigError
from internlm.planning import Plan
from internlm.runtime.parts import RunParts


@dataclass
class RunContext:
    config: RootConfig  # typed, validated
    raw: DictConfig  # the same config as composed (saved beside checkpoints)
    plan: Plan
    run_dir: Path
    parts: RunParts  # the run's components, each built once, on first use

    @property
    def components(self) -> dict[str, str]:
        """Group -> registered component name, for every component group of the config."""
        nodes = {group: getattr(self.config, group) for group in COMPONENT_GROUPS}
        return {group: registry.component_of(node).name for group, node in nodes.items() if node is not None}


class Task:
    """Base of every task: `__init__(config)` keeps the task's own options, `run(ctx)` does the work."""

    needs_tokenizer: ClassVar[bool] = True
    trains: ClassVar[bool] = False
    allocates: ClassVar[bool] = True  # runs here: a training plan that cannot fit this machine is refused

    def __init__(self, config: Any):
        self.config = config

    def check_run_folder(self, config: RootConfig, raw: DictConfig, run_dir: Path) -> None:
        """Refuse a run folder before anything is written (default: any folder will do)."""

    def run(self, ctx: RunContext) -> Any:
        raise NotImplementedError


def require_model_source(config: RootConfig, task_name: str) -> None:
    """Inference tasks: `checkpoint=` must name something that exists, before anything is written."""
    if not config.checkpoint:
        raise ConfigError(f"task={task_name} needs a model", where="checkpoint",
                          fix="add checkpoint=<run folder, checkpoint folder or hf:<export dir>>")
    source = config.checkpoint.removeprefix("hf:")
    if not Path(source).expanduser().exists():
        raise ConfigError(f"'{source}' does not exist", where="checkpoint",
                          fix="pass a run folder, a checkpoint folder or hf:<exported folder>")
