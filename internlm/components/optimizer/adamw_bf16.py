"""AdamW for bf16 weights that does not lose small steps: `optimizer=adamw_bf16`.

A bf16 weight near 1.0 moves in steps of 2^-8: an update of lr 1e-6 rounds back to the same
value every time, so plain bf16 AdamW silently stops learning at fine-tuning rates. Here each
update is computed in fp32 and written back with *stochastic rounding* (round up with probability
equal to the remainder), so the expected bf16 weight equals the fp32 one and small steps add up.
The moment estimates are kept in the parameter's dtype (bf16 under trainer.precision=bf16-true:
8 bytes per parameter with the gradient, against 16 for fp32 master weights), also stochastically
rounded. For fp32 parameters this is exactly torch.optim.AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from internlm.registry import register


@dataclass
class AdamWBF16Config:
    lr: float = 1e-5  # peak learning rate (the scheduler scales it)
    betas: tuple[float, float] = (0.9, 0.95)  # Adam's moment decay rates
    eps: float = 1e-8  # added to the second-moment root
    weight_decay: float = 0.0  # decoupled decay on matrices and embeddings only
    stochastic_rounding: bool = True  # false: round to nearest (loses steps below half a bf16 ulp)


def stochastic_round_(target: torch.Tensor, value: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """target (bf16) <- value (fp32) rounded up or down at random, unbiased: E[target] = value."""
    bits = value.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = ((bits + noise) & -65536).view(torch.float32)  # drop the 16 low bits after adding noise
    target.copy_(torch.where(torch.isfinite(value), rounded, value))


CHUNK = 1 << 24  # elements updated at once


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter's local shard: the update is elementwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class StochasticAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, stochastic_rounding=True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.stochastic_rounding = stochastic_rounding

    def _store(self, target: torch.Tensor, value: torch.Tensor) -> None:
        if target.dtype == torch.bfloat16 and self.stochastic_rounding:
            stochastic_round_(target, value)
        else:
            target.copy_(value)

    def _update(self, weight_out, grad, avg_out, avg_sq_out, step: float, group: dict, beta1: float, beta2: float) -> None:
        grad = grad.float()
        exp_avg = avg_out.float().lerp_(grad, 1 - beta1)
        exp_avg_sq = avg_sq_out.float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        weight = weight_out.float().mul_(1 - group["lr"] * group["weight_decay"])
        denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
        weight.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**step))
        self._store(weight_out, weight)
        self._store(avg_out, exp_avg)
        self._store(avg_sq_out, exp_avg_sq)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                # fp32 temporaries for at most CHUNK elements at a time: the 7B's 422M-element
                # embedding would otherwise cost ~8 GB of scratch at every step.
                flat = [local(t).view(-1) for t in (param.data, param.grad, state["exp_avg"], state["exp_avg_sq"])]
                for start in range(0, flat[0].numel(), CHUNK):
                    self._update(*(t[start : start + CHUNK] for t in flat), step, group, beta1, beta2)
        return loss


@register("optimizer", "adamw_bf16", AdamWBF16Config)
class AdamWBF16:
    """AdamW with stochastic rounding into bf16 weights and states (full fine-tuning in bf16-true)."""

    def __init__(self, config: AdamWBF16Config):
        self.config = config

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        c = self.config
        groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return StochasticAdamW(groups, lr=c.lr, betas=c.betas, eps=c.eps, stochastic_rounding=c.stochastic_rounding)
