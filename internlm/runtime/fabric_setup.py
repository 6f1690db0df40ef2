"""Lightning Fabric for a plan: devices, precision, strategy and loggers; block-level speedups."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from internlm import registry
from internlm.compile import Plan
from internlm.config import RootConfig

log = logging.getLogger("internlm")


LOGGERS = ("csv", "tensorboard")  # compile checks trainer.loggers against these


def make_loggers(names: list[str], run_dir: Path) -> list:
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    makers = {
        "csv": lambda: CSVLogger(root_dir=str(run_dir), name="metrics", version="", flush_logs_every_n_steps=10),
        "tensorboard": lambda: TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version=""),
    }
    return [makers[name]() for name in names]


def make_fabric(config: RootConfig, plan: Plan, run_dir: Path):
    import lightning as L

    strategy = registry.build(config.strategy)
    # Sharding strategies cast parameters themselves (FSDP2 mixed precision): Fabric then must not.
    precision = strategy.fabric_precision(plan.precision)
    fabric_strategy = strategy.fabric_strategy(plan.layout, plan.precision)
    fabric = L.Fabric(
        accelerator=plan.accelerator,
        devices=config.trainer.devices,
        num_nodes=config.trainer.num_nodes,
        precision=precision,
        strategy=fabric_strategy,
        loggers=make_loggers(list(config.trainer.loggers), run_dir),
    )
    fabric.launch()
    return fabric


def use_compile(config: RootConfig, plan: Plan) -> bool:
    wanted = config.trainer.compile
    return plan.accelerator == "cuda" if wanted is None else bool(wanted)


def apply_speedups(model: torch.nn.Module, config: RootConfig, plan: Plan) -> None:
    """Fused kernels, activation checkpointing, then torch.compile, per transformer block (before sharding)."""
    from internlm.components.model.fused_ops import apply_kernels, resolve_kernels

    kernels = resolve_kernels(config.model.kernels, torch.device(plan.accelerator))
    apply_kernels(model, kernels)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        log.info("attention kernel %s; kernels %s; compile %s", plan.attention_backend, kernels.names, use_compile(config, plan))
    if config.trainer.activation_checkpointing != "none":
        from internlm.runtime.activation_checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(
            model, config.trainer.activation_checkpointing, config.trainer.activation_checkpointing_every
        )
    if use_compile(config, plan):
        from internlm.runtime.torch_compile import compile_blocks

        compile_blocks(model)
