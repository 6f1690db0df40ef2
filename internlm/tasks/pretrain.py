"""Next-token pretraining: the shared fit loop with the configured objective (next_token)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from internlm.config import RootConfig
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.runtime import checkpoint
from internlm.runtime.fit import fit
from internlm.tasks.base import RunContext, Task


@dataclass
class PretrainConfig:
    pass


class TrainingTask(Task):
    """Base of the tasks that run the fit loop: their run folder must not hold another run's
    checkpoints, and a resumed checkpoint must hold the configured model."""

    trains = True

    def check_run_folder(self, config: RootConfig, raw: DictConfig, run_dir: Path) -> None:
        spec = config.trainer.resume
        if not spec:
            if checkpoint.complete_checkpoints(run_dir):
                raise ConfigError(
                    f"the run folder {run_dir} already holds checkpoints of an earlier run",
                    where="hydra.run.dir",
                    fix="continue it with trainer.resume=auto, or start a new run in another hydra.run.dir",
                )
            return
        found = checkpoint.find_checkpoint(spec, run_dir)
        if found is not None:
            checkpoint.check_same_model(found, OmegaConf.to_container(raw.model, resolve=True))

    def run(self, ctx: RunContext) -> dict:
        return fit(ctx)


@register("task", "pretrain", PretrainConfig)
class Pretrain(TrainingTask):
    """Train the model on the data from scratch, or resume a run."""
