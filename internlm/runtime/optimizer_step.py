"""Clipping and the weight update of one training step, and what the host learns of it.

Two paths, one result (the same weights up to rounding, the same skips):

* **folded** (torch's fused AdamW or adamw_bf16 on plain tensors, no fp16 loss scaler): the
  clip's scale and the skip of a non-finite step go into the fused kernel itself, through the
  `grad_scale` and `found_inf` inputs it has for AMP (grads are divided by
  max(1, norm / max_norm) inside the update, and a step whose loss or norm is not finite leaves
  weights, moments and step counts as they were). No pass over the gradients to scale them, and
  the host reads loss and norm after the update is queued, so the GPU goes from backward to the
  update to the next step's first kernels without waiting for the host.
* **separate** (every other optimizer, sharded or tensor-parallel parameters, fp16 scaling):
  Fabric's clip, the host reads loss and norm, decides, then steps.

In both, `judge(loss, norm)` (the run's Health) says whether the step counts as an update; its
rule (finite loss and norm) is the one `found_inf` applies on the device.
"""

from __future__ import annotations

from typing import Callable

import torch

CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + eps)

Judge = Callable[[float, float], bool]


def unwrap(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Fabric's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def can_fold(fabric, model, optimizer) -> bool:
    """True when the clip and the skip can ride inside the optimizer's fused kernel."""
    inner = unwrap(optimizer)
    torch_fused = isinstance(inner, torch.optim.Adam) and inner.defaults.get("fused")  # AdamW is an Adam
    if not (torch_fused or getattr(inner, "folds_clip", False)):  # ours: optimizer=adamw_bf16
        return False
    if getattr(getattr(fabric, "_precision", None), "scaler", None) is not None:  # fp16: the scaler owns these inputs
        return False
    # DTensor parameters (FSDP2, tensor parallel): their norm is a DTensor; keep Fabric's clip
    return not any(hasattr(p, "to_local") for p in model.parameters())


def update(fabric, model, optimizer, max_norm: float, loss: torch.Tensor, extras: dict[str, torch.Tensor],
           judge: Judge) -> tuple[float, float, dict[str, float], bool]:
    """Clip, step, zero the gradients: (loss, grad norm, extras as floats, whether it updated).
    `loss` and `extras` are global device scalars (already reduced over ranks)."""
    if can_fold(fabric, model, optimizer):
        return _folded(model, optimizer, max_norm, loss, extras, judge)
    return _separate(fabric, model, optimizer, max_norm, loss, extras, judge)


def _folded(model, optimizer, max_norm, loss, extras, judge):
    inner = unwrap(optimizer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros((), device=loss.device)
    finite = torch.isfinite(loss) & torch.isfinite(norm)
    inner.grad_scale = ((norm + CLIP_EPS) / max_norm).clamp(min=1.0) if max_norm > 0 else None
    inner.found_inf = (~finite).float()
    host = _to_host_async(torch.stack([loss.float(), norm.float(), *(v.float() for v in extras.values())]))
    try:
        optimizer.step()
    finally:
        inner.grad_scale = inner.found_inf = None
    optimizer.zero_grad(set_to_none=True)
    values = host()  # waits for backward's results only: the update may still be running
    loss_f, norm_f = values[0], values[1]
    updated = judge(loss_f, norm_f)
    if not updated and hasattr(inner, "undo_step_count"):  # torch's fused kernel keeps its counts on the device
        inner.undo_step_count()
    return loss_f, norm_f, dict(zip(extras, values[2:])), updated


def _separate(fabric, model, optimizer, max_norm, loss, extras, judge):
    if max_norm > 0:
        norm = fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    norm_f = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    loss_f = float(loss)  # global: every rank decides alike
    updated = judge(loss_f, norm_f)
    if updated:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_f, norm_f, {name: float(value) for name, value in extras.items()}, updated


def _to_host_async(values: torch.Tensor) -> Callable[[], list[float]]:
    """Start copying `values` to the host now; the returned call waits for that copy only."""
    if values.device.type != "cuda":
        return values.tolist
    pinned = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    pinned.copy_(values, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def read() -> list[float]:
        done.synchronize()
        return pinned.tolist()

    return read
