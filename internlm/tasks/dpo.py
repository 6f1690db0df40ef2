"""DPO: the shared fit loop with objective=dpo on preference pairs (data=preference).

The reference model's log-probs come from one of (`task.reference`):

* precompute   a first pass of the starting model over every pair writes them beside the run
               (`reference/<model and data hash>.pt`); a resumed run reuses the file, so the
               reference is the model the run started from, also after a crash
* adapter_off  with adapter=lora: the same model with its adapters switched off (the base)
* frozen       a second, frozen copy of the starting model (memory for two models)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from internlm import registry
from internlm.batch import Batch
from internlm.components.adapter.lora import adapters_disabled
from internlm.components.data.preference import PreferenceData
from internlm.components.objective.dpo import pair_logps
from internlm.config import RootConfig
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.runtime import checkpoint
from internlm.runtime.fit import fit
from internlm.runtime.weights import load_initial_weights
from internlm.tasks.base import RunContext
from internlm.tasks.pretrain import TrainingTask

log = logging.getLogger("internlm")

REFERENCES = ("precompute", "adapter_off", "frozen")


@dataclass
class DPOTaskConfig:
    reference: str = "precompute"  # precompute | adapter_off (with adapter=lora) | frozen (a second model)


def sequence_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probs [P] of the batch's pairs under `model`, without gradients."""
    with torch.no_grad():
        logps = pair_logps(-model(batch.input_ids, labels=batch.labels, reduction="none", **batch.model_inputs()), batch)
    return logps.chosen, logps.rejected


def cache_key(ctx: RunContext, data: PreferenceData) -> str:
    model = OmegaConf.to_container(ctx.raw.model, resolve=True)
    text = json.dumps({"model": model, "precision": ctx.plan.precision, "data": data.fingerprint()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PrecomputedReference:
    """Reference log-probs [pairs, 2] looked up by `Batch.pair_keys`."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.table.to(batch.pair_keys.device)[batch.pair_keys]
        return rows[:, 0], rows[:, 1]

    @staticmethod
    def compute(model, data: PreferenceData, micro_batch_size: int, device) -> torch.Tensor:
        table = torch.full((data.num_pairs, 2), float("nan"), dtype=torch.float32)
        was_training = model.training
        model.eval()
        for rows in data.all_rows:
            for start in range(0, len(rows), micro_batch_size):
                batch = rows.get(list(range(start, min(start + micro_batch_size, len(rows))))).to_batch().to(device)
                chosen, rejected = sequence_logps(model, batch)
                table[batch.pair_keys.cpu()] = torch.stack([chosen, rejected], dim=1).float().cpu()
        model.train(was_training)
        return table


def precomputed(ctx: RunContext, data: PreferenceData) -> PrecomputedReference:
    path = ctx.run_dir / "reference" / f"logps-{cache_key(ctx, data)}.pt"
    if path.exists():
        log.info("reference log-probs from %s", path)
        return PrecomputedReference(torch.load(path, weights_only=True))
    spec = ctx.config.trainer.resume
    if spec and checkpoint.find_checkpoint(spec, ctx.run_dir) is not None:
        raise ConfigError(
            f"resuming DPO needs the reference log-probs the run started with, and {path} is missing",
            where="task.reference",
            fix="restore that file, or start a new run (a trained model is not the reference)",
        )
    fabric = ctx.parts.fabric
    table = PrecomputedReference.compute(ctx.parts.model, data, ctx.plan.micro_batch_size, fabric.device)
    if fabric.is_global_zero:  # every rank computed the same table; one writes it, atomically
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        torch.save(table, partial)
        os.replace(partial, path)
        log.info("reference log-probs of %d pairs written to %s", len(table), path)
    return PrecomputedReference(table)


def frozen_copy(ctx: RunContext) -> torch.nn.Module:
    """A second model with the starting weights, frozen, on the training device."""
    config, fabric = ctx.config, ctx.parts.fabric
    with fabric.init_module():
        reference = registry.build(config.model, ctx.parts.loss)
    if config.model.init_from:
        load_initial_weights(reference, config.model.init_from)
    else:  # the policy starts from the seeded random init: rebuild it identically
        reference.load_state_dict({k: v for k, v in ctx.parts.model.state_dict().items() if ".lora_" not in k})
    reference.requires_grad_(False).eval()
    return fabric.to_device(reference)


def check_components(config: RootConfig, reference: str) -> None:
    """The objective, data, adapter and reference that task=dpo needs, from the config alone."""
    if reference not in REFERENCES:
        raise ConfigError(f"unknown reference '{reference}'", where="task.reference", fix=f"choose one of {', '.join(REFERENCES)}")
    name = lambda node: registry.component_of(node).name if node is not None else "none"
    if name(config.objective) != "dpo":
        raise ConfigError("task=dpo trains with objective=dpo", where="objective", fix="add objective=dpo (or +experiment=tiny_dpo)")
    if name(config.data) != "preference":
        raise ConfigError("task=dpo needs preference pairs", where="data", fix="use data=preference data.paths='[pairs.jsonl]'")
    if reference == "adapter_off" and name(getattr(config, "adapter", None)) != "lora":
        raise ConfigError("task.reference=adapter_off needs adapters to switch off", where="task.reference",
                          fix="add adapter=lora, or use task.reference=precompute")


@register("task", "dpo", DPOTaskConfig)
class DPOTask(TrainingTask):
    """Preference optimisation on (chosen, rejected) pairs with a precomputed, adapter-off or frozen reference."""

    def check_run_folder(self, config: RootConfig, raw: DictConfig, run_dir: Path) -> None:
        check_components(config, self.config.reference)  # before plan.yaml, a model or the data
        super().check_run_folder(config, raw, run_dir)

    def run(self, ctx: RunContext) -> dict:
        reference = self.config.reference
        objective, data = ctx.parts.objective, ctx.parts.data
        model = ctx.parts.model
        if reference == "adapter_off":  # check_components made sure the model has adapters

            def base_logps(batch: Batch):
                with adapters_disabled(model):
                    return sequence_logps(model, batch)

            objective.reference = base_logps
        elif reference == "frozen":
            copy, fabric = frozen_copy(ctx), ctx.parts.fabric

            def frozen_logps(batch: Batch):
                with fabric.autocast():  # the copy is not set up by Fabric: its precision, as the policy's
                    return sequence_logps(copy, batch)

            objective.reference = frozen_logps
        else:
            objective.reference = precomputed(ctx, data)
        return fit(ctx, objective)
