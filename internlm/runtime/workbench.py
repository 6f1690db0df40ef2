"""Builds a run's components from the typed config, each once, on first use, in the right order
(Fabric first; the model before its optimizer, since sharding replaces its parameters)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch

from internlm import registry
from internlm.compile import Plan
from internlm.config import RootConfig
from internlm.runtime import fabric_setup


class Workbench:
    def __init__(self, config: RootConfig, plan: Plan, run_dir: Path):
        self.config, self.plan, self.run_dir = config, plan, run_dir

    @cached_property
    def fabric(self):
        return fabric_setup.make_fabric(self.config, self.plan, self.run_dir)

    @cached_property
    def tokenizer(self):
        return registry.build(self.config.tokenizer)

    @cached_property
    def data(self):
        return registry.build(self.config.data, self.tokenizer)

    @cached_property
    def loss(self):
        return registry.build(self.config.loss)

    @cached_property
    def model(self) -> torch.nn.Module:
        """The model, initialised (or loaded via model.init_from) and set up by Fabric's strategy."""
        fabric = self.fabric
        torch.manual_seed(self.config.trainer.seed)  # identical init on every rank
        strategy = registry.build(self.config.strategy)
        # A large model under a sharding strategy is created on the meta device and initialised after sharding.
        on_meta = strategy.init_on_meta(self.plan.parameters) and not self.config.model.init_from
        with fabric.init_module(empty_init=on_meta):
            model = registry.build(self.config.model)
        loss = self.loss  # computed inside forward, where sharded weights are gathered
        model.loss_fn = lambda hidden, weight, labels: loss(hidden, weight, labels)[0]
        if self.config.model.init_from:
            from internlm.runtime.weights import load_initial_weights

            load_initial_weights(model, self.config.model.init_from)
        fabric_setup.apply_speedups(model, self.config, self.plan)
        return fabric.setup_module(model)

    @cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.fabric.setup_optimizers(registry.build(self.config.optimizer).build(self.model))

    @cached_property
    def scheduler(self):
        return registry.build(self.config.scheduler).build(self.optimizer, self.config.trainer.max_steps)
