"""Lightning Fabric for a plan: devices, precision, strategy and loggers."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from internlm.config import RootConfig
from internlm.planning import Plan
from internlm.runtime.child_watchdog import give_watchdog_grace

WATCHDOG_MARGIN_S = 30  # past the collective timeout: time to write the message and exit


def make_loggers(names: list[str], run_dir: Path) -> list:
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    makers = {
        # every row reaches the file at once: a killed run keeps every step it logged
        "csv": lambda: CSVLogger(root_dir=str(run_dir), name="metrics", version="", flush_logs_every_n_steps=1),
        "tensorboard": lambda: TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version=""),
    }
    return [makers[name]() for name in names]


def make_fabric(config: RootConfig, plan: Plan, run_dir: Path, strategy, parallelize: Callable | None):
    """Fabric for the plan, launched (its processes started) and ready for `setup_module`."""
    from datetime import timedelta

    import lightning as L

    # Sharding strategies cast parameters themselves (FSDP2 mixed precision): Fabric then must not.
    precision = strategy.fabric_precision(plan.precision)
    fabric = L.Fabric(
        accelerator=plan.accelerator,
        devices=config.trainer.devices,
        num_nodes=config.trainer.num_nodes,
        precision=precision,
        strategy=strategy.fabric_strategy(plan.layout, plan.precision, parallelize,
                                          timeout=timedelta(seconds=config.trainer.collective_timeout_s)),
        loggers=make_loggers(list(config.trainer.loggers), run_dir),
    )
    # A rank that dies gets reported by rank 0 in one message (lost_peer): Lightning's watchdog waits for it
    give_watchdog_grace(config.trainer.collective_timeout_s + WATCHDOG_MARGIN_S)
    fabric.launch()
    return fabric
