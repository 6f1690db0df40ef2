"""Direct Preference Optimisation (Rafailov et al. 2023) and its variants, as TRL defines them.

A micro batch holds whole pairs: each row packs (chosen, rejected) sequences as documents, and
`Batch.sequence_pair` / `Batch.sequence_chosen` say which pair each token belongs to and whether it
is the chosen answer. The policy's per-token log-probabilities come from the model
(`reduction="none"`); those of the reference come from `self.reference(batch)` (precomputed,
adapter-off or a frozen copy: the dpo task decides). Per pair, with margins
d = (logp_c - ref_c) - (logp_r - ref_r):

    sigmoid  -(1 - ls) log s(beta d) - ls log s(-beta d)      (ls = label_smoothing: cDPO)
    robust   (-(1 - ls) log s(beta d) + ls log s(-beta d)) / (1 - 2 ls)
    hinge    relu(1 - beta d)
    ipo      (d_c / n_c - d_r / n_r - 1 / (2 beta))^2         (log-ratios averaged per answer token)

plus `sft_weight` x the chosen answer's mean per-token NLL (RPO). TRL's current `sigmoid` has no
label smoothing (its older releases did, as here); with label_smoothing=0 they are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from internlm.batch import IGNORE_INDEX, Batch
from internlm.components.objective.base import Objective, StepResult
from internlm.errors import ConfigError
from internlm.registry import register

LOSSES = ("sigmoid", "ipo", "hinge", "robust")

# batch -> (reference chosen log-probs [P], reference rejected log-probs [P]) of its pairs
Reference = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DPOConfig:
    loss: str = "sigmoid"  # sigmoid | ipo | hinge | robust (TRL's loss_type)
    beta: float = 0.1  # strength of the KL penalty to the reference (IPO: tau)
    label_smoothing: float = 0.0  # assumed share of flipped labels (sigmoid: cDPO; robust: < 0.5)
    sft_weight: float = 0.0  # weight of the chosen answer's NLL added to the loss (RPO's alpha); 0 = off


@dataclass
class PairLogps:
    """Sums over each pair's answer tokens: [P] each, and the answer lengths."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def pair_count(batch: Batch) -> int:
    if batch.sequence_pair is None:
        raise ConfigError(
            "objective=dpo needs preference pairs, this batch has none", where="data", fix="use data=preference"
        )
    if batch.pair_keys is not None:  # one key per pair: a shape, so a GPU batch is not read (no host sync)
        return batch.pair_keys.numel()
    return int(batch.sequence_pair.max()) + 1 if batch.sequence_pair.numel() else 0


def pair_logps(token_logps: torch.Tensor, batch: Batch) -> PairLogps:
    """Per-token log-probs [B, S] (0 where unlabelled) summed per pair and side."""
    pairs = pair_count(batch)
    labelled = (batch.labels != IGNORE_INDEX) & (batch.sequence_pair >= 0)
    index = batch.sequence_pair.clamp(min=0).flatten()
    chosen = (batch.sequence_chosen & labelled).flatten()
    rejected = (~batch.sequence_chosen & labelled).flatten()
    values = token_logps.flatten().to(torch.float32)

    def per_pair(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(pairs, dtype=x.dtype, device=x.device).index_add(0, index, x * mask)

    ones = torch.ones_like(values)
    return PairLogps(per_pair(chosen, values), per_pair(rejected, values), per_pair(chosen, ones), per_pair(rejected, ones))


def dpo_losses(
    policy: PairLogps, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, config: DPOConfig
) -> torch.Tensor:
    """The per-pair loss [P] (without the sft term)."""
    beta, ls = config.beta, config.label_smoothing
    chosen_ratio = policy.chosen - ref_chosen
    rejected_ratio = policy.rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if config.loss == "sigmoid":
        return -(1 - ls) * F.logsigmoid(beta * delta) - ls * F.logsigmoid(-beta * delta)
    if config.loss == "robust":
        return (-(1 - ls) * F.logsigmoid(beta * delta) + ls * F.logsigmoid(-beta * delta)) / (1 - 2 * ls)
    if config.loss == "hinge":
        return torch.relu(1 - beta * delta)
    if config.loss == "ipo":
        ipo_delta = chosen_ratio / policy.chosen_tokens.clamp(min=1) - rejected_ratio / policy.rejected_tokens.clamp(min=1)
        return (ipo_delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss {config.loss!r}")


def check_dpo_config(config: DPOConfig) -> None:
    if config.loss not in LOSSES:
        raise ConfigError(f"unknown DPO loss '{config.loss}'", where="objective.loss", fix=f"choose one of {', '.join(LOSSES)}")
    if config.beta <= 0:
        raise ConfigError(f"beta must be > 0, got {config.beta}", where="objective.beta", fix="e.g. objective.beta=0.1")
    upper = 0.5 if config.loss == "robust" else 1.0
    if not 0.0 <= config.label_smoothing < upper:
        raise ConfigError(
            f"label_smoothing must be in [0, {upper}) for loss={config.loss}, got {config.label_smoothing}",
            where="objective.label_smoothing",
            fix="e.g. 0.1, or 0 for none",
        )
    if config.sft_weight < 0:
        raise ConfigError(f"sft_weight must be >= 0, got {config.sft_weight}", where="objective.sft_weight", fix="e.g. 1.0, or 0 for none")


@register("objective", "dpo", DPOConfig)
class DPO(Objective):
    """Preference optimisation on (chosen, rejected) pairs against a reference model; units are pairs."""

    def __init__(self, config: DPOConfig | None = None, reference: Reference | None = None):
        self.config = config or DPOConfig()
        check_dpo_config(self.config)
        self.reference = reference  # set by the dpo task before training

    def units(self, batch: Batch) -> int:
        return pair_count(batch)

    def token_logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return -model(batch.input_ids, labels=batch.labels, reduction="none", **batch.model_inputs())

    def step(self, model: torch.nn.Module, batch: Batch) -> StepResult:
        if self.reference is None:
            raise RuntimeError("DPO objective has no reference: the dpo task sets one")
        ref_chosen, ref_rejected = (r.detach().to(torch.float32) for r in self.reference(batch))
        policy = pair_logps(self.token_logps(model, batch), batch)
        losses = dpo_losses(policy, ref_chosen, ref_rejected, self.config)
        if self.config.sft_weight:
            losses = losses + self.config.sft_weight * (-policy.chosen / policy.chosen_tokens.clamp(min=1))
        beta = self.config.beta
        chosen_reward = beta * (policy.chosen - ref_chosen).detach()
        rejected_reward = beta * (policy.rejected - ref_rejected).detach()
        metrics = {
            "rewards/chosen": chosen_reward.sum(),
            "rewards/rejected": rejected_reward.sum(),
            "rewards/margins": (chosen_reward - rejected_reward).sum(),
            "rewards/accuracies": (chosen_reward > rejected_reward).float().sum(),
            "logps/chosen": policy.chosen.detach().sum(),
            "logps/rejected": policy.rejected.detach().sum(),
        }
        return StepResult(loss_sum=losses.sum(), count=len(losses), metrics=metrics)
