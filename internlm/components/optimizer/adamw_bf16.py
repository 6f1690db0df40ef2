"""AdamW for bf16 weights that does not lose small steps: `optimizer=adamw_bf16`.

A bf16 weight near 1.0 moves in steps of 2^-8: an update of lr 1e-6 rounds back to the same
value every time, so plain bf16 AdamW silently stops learning at fine-tuning rates. Here each
update is computed in fp32 and written back with *stochastic rounding* (round up with probability
equal to the remainder), so the expected bf16 weight equals the fp32 one and small steps add up.
The moment estimates are kept in the parameter's dtype (bf16 under trainer.precision=bf16-true:
8 bytes per parameter with the gradient, against 16 for fp32 master weights), also stochastically
rounded. For fp32 parameters this is torch.optim.AdamW's arithmetic (to fp32 rounding).

`optimizer.master_weights=true` keeps an fp32 copy of each bf16 weight and fp32 moments instead
(the bf16 weight is that copy rounded to nearest after each step): torch.optim.AdamW's arithmetic
on the fp32 copy, exactly, while the model computes in bf16 (no autocast casts, bf16 gradients).
16 B per parameter with the bf16 weight and gradient, as bf16-mixed; it is what torchtitan's FSDP
mixed precision and Megatron's distributed optimizer keep.

On CUDA each chunk's update is one kernel (`torch.compile` of `adamw_chunk_`, fullgraph, with the
rounding's random bits drawn inside the kernel). Bytes moved per bf16 parameter:

* eager (the CPU path, `optimizer.fused=false`): 30 elementwise kernels over fp32 temporaries,
  108 B for the AdamW arithmetic (12 passes: 3 casts to fp32 of 6 B, lerp 12, mul 8, addcmul 16,
  mul 8, div 8, sqrt 8, add 8, the update 16 [counted as addcdiv]) + 3 stochastic roundings of
  48 B (noise 4, add 12, mask 8, isfinite 5, where 13, cast to bf16 6) = 252 B: 1.84 TB per step
  of a 7.3e9-parameter model, ~0.5 s at the H200's ~3.5 TB/s.
* fused: read weight, gradient and two moments (8 B), write weight and moments (6 B) = 14 B, the
  floor: 0.10 TB per step. (fp32 parameters: 28 B, as torch's fused AdamW; master weights: read
  gradient 2, master and moments 12, write them 12 and the bf16 weight 2 = 28 B.)

Compiles: one graph per (parameter dtype, rounding mode, master weights or not): `dynamic=True` makes the chunk length
and offset symbolic, and the values that change every step (lr, bias corrections) are passed as
0-d tensors, so neither shapes nor steps recompile; a 7B step in bf16 compiles once (a chunk of a
single element would add one, specialised). torchao's AdamW(bf16_stochastic_round=True) is not
used: it rounds the weight stochastically but the bf16 moments to nearest (with beta2 0.999 the
second moment's updates, 1e-3 relative, are below half a bf16 ulp and would be lost) and compiles
once per parameter shape.
"""

from __future__ import annotations

import functools
import math
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
    master_weights: bool = False  # fp32 copies of bf16 weights and fp32 moments: exact AdamW, 16 B/param (rounding moot)
    fused: bool | None = None  # one compiled kernel per chunk; null = on when the parameters are on a GPU


def stochastic_round_(target: torch.Tensor, value: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """target (bf16) <- value (fp32) rounded up or down at random, unbiased: E[target] = value."""
    bits = value.contiguous().view(torch.int32)
    if generator is None:  # torch.compile traces randint without a generator argument only
        noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device)
    else:
        noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = ((bits + noise) & -65536).view(torch.float32)  # drop the 16 low bits after adding noise
    target.copy_(torch.where(torch.isfinite(value), rounded, value))


def adamw_chunk_(
    weight: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    master: torch.Tensor | None, decay: torch.Tensor, step_size: torch.Tensor, bias_correction2_sqrt: torch.Tensor,
    inv_grad_scale: torch.Tensor | None, skip: torch.Tensor | None,
    beta1: float, beta2: float, eps: float, stochastic: bool,
) -> None:
    """One AdamW update of one chunk, in place: fp32 arithmetic, each result written back in its
    tensor's dtype (bf16 stochastically rounded when `stochastic`). With `master` (fp32, the
    weight's copy) the update applies to it and the weight becomes it rounded to nearest.
    decay = 1 - lr x weight_decay, step_size = lr / (1 - beta1^step), bias_correction2_sqrt =
    (1 - beta2^step)^0.5: 0-d tensors, so that a compiled graph does not specialise on them.
    The folded clip (runtime/optimizer_step): the gradient times `inv_grad_scale`, and where
    `skip` is non-zero every tensor keeps its value (0-d device tensors: no host sync)."""
    grad = grad.float()
    if inv_grad_scale is not None:
        grad = grad * inv_grad_scale
    avg = torch.lerp(exp_avg.float(), grad, 1 - beta1)  # out of place: fp32 states stay as they were until written
    avg_sq = exp_avg_sq.float().mul(beta2).addcmul_(grad, grad, value=1 - beta2)
    new_weight = (weight if master is None else master).float().mul(decay)
    denom = (avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    new_weight.sub_(avg * step_size / denom)
    updates = [(exp_avg, avg), (exp_avg_sq, avg_sq)]
    updates += [(weight, new_weight)] if master is None else [(master, new_weight), (weight, new_weight)]
    for target, value in updates:
        if skip is not None:
            value = torch.where(skip > 0, target.float(), value)  # a bf16 value rounds to itself either way
        if target.dtype == torch.bfloat16 and stochastic and master is None:
            stochastic_round_(target, value)
        else:
            target.copy_(value)  # bf16: to nearest


CHUNK = 1 << 24  # elements updated at once eagerly: bounds the fp32 temporaries (6 x 64 MB)
# The fused kernel keeps no temporaries: its chunks only bound the elements per launch (int32
# indexing) and save calls (each costs ~50 us of guards and launch on the host): 297 for a 7B.
FUSED_CHUNK = 1 << 27
COMPILE_BACKEND = "inductor"  # CPU tests use "aot_eager": the same graph capture, no code generation


@functools.cache
def compiled_update(backend: str):
    # Inductor times two tilings of this kernel at its first call and keeps the faster; with its
    # local autotune cache that pick is stored beside the compiled kernel and reused by every
    # later run. A pick timed while other work shared the GPU (a benchmark's concurrent warm-up)
    # once kept the slower tiling: 1.63 against 0.97 ms per 128M elements, ~20 ms of a 7B step.
    # So each process times the two itself (milliseconds, once).
    options = {"autotune_local_cache": False} if backend == "inductor" else None
    return torch.compile(adamw_chunk_, fullgraph=True, dynamic=True, backend=backend, options=options)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter's local shard: the update is elementwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class StochasticAdamW(torch.optim.Optimizer):
    # runtime/optimizer_step folds the clip and the non-finite skip into the update, as into
    # torch's fused AdamW: it sets these two 0-d device tensors around step()
    folds_clip = True
    grad_scale: torch.Tensor | None = None  # gradients are divided by it
    found_inf: torch.Tensor | None = None  # non-zero: the step leaves every tensor as it was

    def __init__(self, params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, stochastic_rounding=True, fused=None,
                 master_weights=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.stochastic_rounding = stochastic_rounding
        self.fused = fused
        self.master_weights = master_weights

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every floating state tensor to its parameter's dtype on load: the fp32 master
        weights and moments of bf16 parameters would come back as bf16. They are put back in fp32."""
        saved = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        fp32 = {pid: {key: value for key, value in state_dict["state"].get(pid, {}).items()
                      if key != "step" and torch.is_tensor(value) and value.dtype == torch.float32}
                for pid in saved}
        super().load_state_dict(state_dict)
        params = [param for group in self.param_groups for param in group["params"]]
        for pid, param in zip(saved, params):
            for key, value in fp32[pid].items():
                self.state[param][key] = value.to(device=param.device, copy=True)

    def _update_fn(self, param: torch.Tensor):
        """(update function, chunk length) for this parameter."""
        fused = param.device.type == "cuda" if self.fused is None else self.fused
        return (compiled_update(COMPILE_BACKEND), FUSED_CHUNK) if fused else (adamw_chunk_, CHUNK)

    def undo_step_count(self) -> None:
        """The last step was skipped on the device (found_inf): its step counts go back, so the
        bias corrections count the updates that happened (torch's fused kernel does the same)."""
        for state in self._stepped:
            state["step"] -= 1
        self._stepped = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self._stepped = []
        inv_grad_scale = None if self.grad_scale is None else 1.0 / self.grad_scale.float()
        skip = None if self.found_inf is None else self.found_inf.float()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    if self.master_weights and param.dtype != torch.float32:
                        state["master"] = param.detach().float()  # a copy (a new fp32 tensor), sharded as the parameter
                    moments = torch.float32 if "master" in state else param.dtype
                    state["exp_avg"] = torch.zeros_like(param, dtype=moments)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=moments)
                state["step"] += 1
                self._stepped.append(state)
                step = float(state["step"])
                scalars = [
                    torch.tensor(value, dtype=torch.float32)
                    for value in (1 - lr * group["weight_decay"], lr / (1 - beta1**step), math.sqrt(1 - beta2**step))
                ]
                update, chunk = self._update_fn(param)
                # eagerly, the 7B's 422M-element embedding in one piece would cost ~8 GB of fp32
                # scratch. detach(): a chunk without a `_base`, so that the compiled graph does
                # not guard on (and recompile for) the parameter's shape.
                flat = [local(t).view(-1) if t is not None else None
                        for t in (param.data, param.grad, state["exp_avg"], state["exp_avg_sq"], state.get("master"))]
                for start in range(0, flat[0].numel(), chunk):
                    pieces = [t[start : start + chunk].detach() if t is not None else None for t in flat]
                    update(*pieces, *scalars, inv_grad_scale, skip, beta1, beta2, group["eps"], self.stochastic_rounding)
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
        return StochasticAdamW(
            groups, lr=c.lr, betas=c.betas, eps=c.eps, stochastic_rounding=c.stochastic_rounding, fused=c.fused,
            master_weights=c.master_weights,
        )
