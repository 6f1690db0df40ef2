"""The path of one run, whatever the entry point (CLI, tests, notebooks)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from internlm import registry
from internlm.compile import compile_plan, to_typed, write_plan
from internlm.runtime.workbench import Workbench
from internlm.tasks.base import RunContext

log = logging.getLogger("internlm")


def tokenizer_vocab(config) -> int | None:
    """The tokenizer's vocabulary size, for the compile check; a missing or corrupt tokenizer file
    is reported here, before anything heavy starts."""
    return registry.build(config.tokenizer).vocab_size


def run(cfg: DictConfig, run_dir: Path) -> Any:
    """Compile `cfg`, write plan.yaml into `run_dir`, then run the task."""
    config = to_typed(cfg)
    needs_tokenizer = registry.component_of(config.task).name not in ("components", "train_tokenizer")
    plan = compile_plan(config, tokenizer_vocab(config) if needs_tokenizer else None)
    task = registry.build(config.task)
    if hasattr(task, "check_run_folder"):  # e.g. pretrain: resume rules, checked before writing
        task.check_run_folder(config, cfg, run_dir)
    for note in plan.warnings:
        log.warning(note)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_plan(run_dir / "plan.yaml", cfg, plan)
    ctx = RunContext(config=config, raw=cfg, plan=plan, run_dir=run_dir, bench=Workbench(config, plan, run_dir))
    return task.run(ctx)
