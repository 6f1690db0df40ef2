"""Lightning Fabric for a plan: devices, precision, strategy and loggers; block-level speedups."""

from __future__ import annotations

from pathlib import Path

import torch

from internlm import registry
from internlm.compile import Plan
from internlm.config import RootConfig
from internlm.errors import ConfigError


def make_loggers(names: list[str], run_dir: Path) -> list:
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    makers = {
        "csv": lambda: CSVLogger(root_dir=str(run_dir), name="metrics", version="", flush_logs_every_n_steps=10),
        "tensorboard": lambda: TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version=""),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ConfigError(f"unknown logger(s) {unknown}", where="trainer.loggers", fix=f"choose from {list(makers)}")
    return [makers[name]() for name in names]


def make_fabric(config: RootConfig, plan: Plan, run_dir: Path):
    import lightning as L

    strategy = registry.build(config.strategy)
    fabric = L.Fabric(
        accelerator=plan.accelerator,
        devices=config.trainer.devices,
        num_nodes=config.trainer.num_nodes,
        precision=plan.precision,
        strategy=strategy.fabric_strategy(plan.layout),
        loggers=make_loggers(list(config.trainer.loggers), run_dir),
    )
    fabric.launch()
    return fabric


def use_compile(config: RootConfig, plan: Plan) -> bool:
    wanted = config.trainer.compile
    return plan.accelerator == "cuda" if wanted is None else bool(wanted)


def apply_speedups(model: torch.nn.Module, config: RootConfig, plan: Plan) -> None:
    """Activation checkpointing, then torch.compile, per transformer block (before sharding)."""
    if config.trainer.activation_checkpointing != "none":
        from internlm.runtime.activation_checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(
            model, config.trainer.activation_checkpointing, config.trainer.activation_checkpointing_every
        )
    if use_compile(config, plan):
        from internlm.runtime.torch_compile import compile_blocks

        compile_blocks(model)
