"""fp8 training of the transformer blocks' linear layers (torchao's float8), applied from outside.

`model.kernels.matmul` picks the matmul precision of every linear layer inside the blocks
(q/k/v/o projections and the SwiGLU gate/up/down):

* bf16: the model is untouched (autocast or FSDP2 mixed precision runs the matmuls in bf16).
* fp8_tensorwise: torchao's Float8Linear with one dynamic scale per tensor; the fastest on an
  H200 (bench/RESULTS.md). Under FSDP2 sharding its weights are all-gathered in fp8 (half the
  bytes of bf16), with the scales of all weights computed in one all-reduce after each
  optimizer step (`register_scale_precompute`).
* fp8_rowwise: one scale per row of each operand (finer, more robust to outliers, slower).

`model.kernels.fp8_fast_accum` picks which of a layer's three fp8 gemms accumulate in the tensor
cores' own precision: `forward` (torchao's default: the output gemm), `all` (the input- and
weight-gradient gemms too: faster, with the loss parity shown in bench/RESULTS.md) or `none`.

The embedding and the LM head stay bf16: the head's logits feed the loss directly and are the
layer most sensitive to rounding (torchtitan and torchao leave it out too). Parameters, gradients
and optimizer states keep their dtype; only the matmul inputs are cast to fp8 on the fly (e4m3
for forward operands, e4m3 with dynamic scaling for gradients), outputs come back in the input's
dtype.

Order in the model assembly: after the fused kernels and adapters, before tensor parallelism,
activation checkpointing, torch.compile and FSDP (fully_shard must see Float8Linear weights to
gather them in fp8). Refused: fp8 with tensor parallelism (it needs torchao's Float8 parallel
styles, not wired up or measured here) and fp8 on layers an adapter changed (LoRA).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import torch
from torch import nn

from internlm.components.model.matmul_precision import BF16_FIX, FAST_ACCUM, MATMULS, WHERE, check_matmul, torchao_unavailable  # noqa: F401
from internlm.errors import ConfigError
from internlm.runtime.activation_checkpointing import transformer_blocks

log = logging.getLogger("internlm")

RECIPES = {"fp8_tensorwise": "tensorwise", "fp8_rowwise": "rowwise"}  # torchao's recipe names


def device_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def float8_config(matmul: str, *, fp8_all_gather: bool = False, emulate: bool = False, fast_accum: str = "forward"):
    """torchao's Float8LinearConfig for a choice. `fp8_all_gather` (FSDP2 sharding) applies to
    tensorwise scaling only, the one torchao can gather in fp8. `emulate` runs the fp8 casts with
    high-precision matmuls (any device, eager only): for tests, never for speed. `fast_accum`:
    FAST_ACCUM's choice of the gemms that use the tensor cores' accumulator unpromoted."""
    from torchao.float8 import Float8LinearConfig
    from torchao.float8.config import Float8GemmConfig

    config = Float8LinearConfig.from_recipe_name(RECIPES[matmul])
    changes = {}
    if fast_accum != "forward":  # all three gemms alike: unpromoted (`all`) or promoted (`none`)
        gemm = Float8GemmConfig(use_fast_accum=fast_accum == "all")
        changes |= dict.fromkeys(("gemm_config_output", "gemm_config_grad_input", "gemm_config_grad_weight"), gemm)
    if fp8_all_gather and matmul == "fp8_tensorwise":
        changes["enable_fsdp_float8_all_gather"] = True
    if emulate:
        changes["emulate"] = True
    return dataclasses.replace(config, **changes) if changes else config


def fp8_shape_ok(module: nn.Module, fqn: str = "") -> bool:
    """fp8 matmuls need both dimensions divisible by 16 (a hardware rule); others stay bf16."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert_to_float8(
    model: nn.Module,
    matmul: str,
    *,
    fp8_all_gather: bool = False,
    emulate: bool = False,
    fast_accum: str = "forward",
) -> list[str]:
    """Swap the blocks' nn.Linear layers for torchao's Float8Linear in place (same parameters,
    same names, so checkpoints are unchanged). Returns the converted modules' names; `bf16`
    converts nothing. Layers outside the blocks (the LM head) are never touched."""
    if matmul == "bf16":
        return []
    if matmul not in RECIPES:
        raise ConfigError(f"unknown matmul precision '{matmul}'", where=WHERE, fix=f"choose one of: {', '.join(MATMULS)}")
    from torchao.float8 import convert_to_float8_training

    if matmul == "fp8_rowwise":
        # As torchtitan does for rowwise under compile (pytorch/pytorch#150859): make inductor
        # round the fp8 casts exactly as eager does.
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = True
    config = float8_config(matmul, fp8_all_gather=fp8_all_gather, emulate=emulate, fast_accum=fast_accum)
    block_names = {id(module): name for name, module in model.named_modules()}
    adapted = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and type(m) is not nn.Linear]
    if adapted:  # torchao's swap keeps only weight and bias: an adapter's extra weights would be lost
        raise ConfigError(
            f"{WHERE}={matmul} cannot convert linear layers that an adapter changed ({adapted[0]}: {type(model.get_submodule(adapted[0])).__name__})",
            where=WHERE,
            fix=f"{BF16_FIX} when training with an adapter (e.g. adapter=lora)",
        )
    converted, skipped = [], []
    for block in transformer_blocks(model):
        prefix = block_names[id(block)]
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                (converted if fp8_shape_ok(module) else skipped).append(f"{prefix}.{name}")
        convert_to_float8_training(block, config=config, module_filter_fn=fp8_shape_ok)
    if skipped:
        log.info("%s: %d linear layers stay bf16 (a dimension not divisible by 16): %s", matmul, len(skipped), skipped[:4])
    return converted


def uses_fp8_all_gather(model: nn.Module) -> bool:
    return any(getattr(getattr(m, "config", None), "enable_fsdp_float8_all_gather", False) for m in float8_layers(model))


def float8_layers(model: nn.Module) -> list[nn.Module]:
    from torchao.float8.float8_linear import Float8Linear

    return [m for m in model.modules() if isinstance(m, Float8Linear)]


def register_scale_precompute(model: nn.Module, optimizer: torch.optim.Optimizer):
    """With fp8 all-gather, compute every weight's fp8 scale in one all-reduce after each
    optimizer step (otherwise each gather computes its own). Returns the hook handle, or None
    when the model does not gather in fp8."""
    if importlib.util.find_spec("torchao") is None or not uses_fp8_all_gather(model):
        return None
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    return optimizer.register_step_post_hook(lambda *_: precompute_float8_dynamic_scale_for_fsdp(model))
