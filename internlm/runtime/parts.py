"""A run's components, each built once, on first use, in the right order (Fabric first; the model
before its optimizer, since sharding replaces its parameters). The light pieces the program
already built to compile the plan (tokenizer, strategy, scheduler, ...) are handed in, not rebuilt."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from internlm import registry
from internlm.config import RootConfig
from internlm.planning import Plan
from internlm.runtime import assembly, fabric_setup, float8


class RunParts:
    def __init__(self, config: RootConfig, plan: Plan, run_dir: Path, built: dict[str, Any]):
        """`built`: group -> component object the program built already (tokenizer, strategy, ...)."""
        self.config, self.plan, self.run_dir = config, plan, run_dir
        self._built = dict(built)

    def _component(self, group: str, *args: Any) -> Any:
        if group not in self._built:
            self._built[group] = registry.build(getattr(self.config, group), *args)
        return self._built[group]

    @property
    def strategy(self):
        return self._component("strategy")

    @property
    def tokenizer(self):
        return self._component("tokenizer")

    @property
    def objective(self):
        return self._component("objective")

    @cached_property
    def fabric(self):
        parallelize = assembly.parallelize_fn(self.config, self.plan, self.strategy)
        return fabric_setup.make_fabric(self.config, self.plan, self.run_dir, self.strategy, parallelize)

    @cached_property
    def data(self):
        return registry.build(self.config.data, self.tokenizer)

    @cached_property
    def loss(self):
        return registry.build(self.config.loss)

    @cached_property
    def adapter(self):
        node = getattr(self.config, "adapter", None)
        return registry.build(node) if node is not None else None

    @cached_property
    def model(self) -> torch.nn.Module:
        """The model, assembled (internlm/runtime/assembly.py) and set up by Fabric's strategy."""
        return assembly.assemble_model(self.fabric, self.config, self.plan, self.strategy, self.loss, self.adapter)

    @cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.fabric.setup_optimizers(self._component("optimizer").build(self.model))
        float8.register_scale_precompute(self.model, optimizer)  # sharded tensorwise fp8: one scale all-reduce per step
        return optimizer

    @cached_property
    def scheduler(self):
        return self._component("scheduler").build(self.optimizer, self.config.trainer.max_steps)
