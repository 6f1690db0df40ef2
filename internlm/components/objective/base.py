"""The objective seam of the one training loop (`internlm/runtime/fit.py`).

An objective says what a step computes on a micro batch; the loop does everything else
(accumulation, normalisation over the global batch, clipping, checkpoints, validation, logging).

    units(batch) -> int          what the loss is averaged over (labelled tokens, pairs, ...),
                                 asked before the forward so the loop knows the global total
    step(model, batch) -> StepResult(loss_sum, count, metrics)

`loss_sum` and every metric are sums over the micro batch's units: the loop divides them by the
units of the whole global batch (all micro batches, all data-parallel ranks), so 1 or N devices
with any accumulation optimise and report the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from internlm.batch import Batch


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # scalar, summed over the micro batch's units; the backward runs through it
    count: int | torch.Tensor  # units summed in loss_sum (what units(batch) returned); a device scalar avoids a host sync
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> sum over units (reported as a mean)


class Objective:
    """Base of objective components: the loop calls `units` then `step` for each micro batch."""

    def units(self, batch: Batch) -> int:
        raise NotImplementedError

    def step(self, model: torch.nn.Module, batch: Batch) -> StepResult:
        raise NotImplementedError
