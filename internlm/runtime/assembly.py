"""The model-assembly pipeline: every step from a config to a model ready to train, in one order.

    1 build          the model component, with its loss (vocab-parallel when the head is split);
                     a large model under a sharding strategy on the meta device
    2 init_from      published or earlier weights (run:, hf:, internlm:)
    3 kernels        fused implementations of RMSNorm / SwiGLU / rotary (model.kernels)
    4 adapters       e.g. LoRA (adapter=...), so only adapter parameters train
    4b float8        the blocks' linears in fp8 (model.kernels.matmul, internlm/runtime/float8.py)
    5 tensor parallel  DTensor colwise/rowwise + sequence-parallel norms   } sharding strategies:
    6 activation checkpointing  (trainer.activation_checkpointing)           } `parallelize`, which
    7 compile        torch.compile per block (trainer.compile)               } Fabric calls inside
    8 FSDP2          per block + root, on the (replicate, shard) mesh        } setup_module
    9 init           a meta-device model materialised and initialised shard by shard

Without a sharding strategy, steps 6-7 run before Fabric wraps the model (DDP or one device).
As in torchtitan's parallelize.py, the order is the point: tensor parallelism replaces parameters
with DTensors before FSDP2 shards them; activation checkpointing wraps what compile compiles.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from internlm import registry
from internlm.components.loss.vocab_parallel import VocabParallelCrossEntropy
from internlm.components.model.fused_ops import apply_kernels, resolve_kernels
from internlm.config import RootConfig
from internlm.planning import Plan
from internlm.runtime import parallelize as parallel
from internlm.runtime import float8
from internlm.runtime.activation_checkpointing import apply_activation_checkpointing
from internlm.runtime.torch_compile import compile_blocks
from internlm.runtime.weights import load_initial_weights

log = logging.getLogger("internlm")


def use_compile(config: RootConfig, plan: Plan) -> bool:
    wanted = config.trainer.compile
    return plan.accelerator == "cuda" if wanted is None else bool(wanted)


def model_loss(loss, plan: Plan):
    """The loss the model is built with: under tensor parallelism the head's rows are split and the
    loss must be the vocab-parallel cross-entropy (the configured loss is not used then)."""
    if plan.layout.tensor > 1:
        log.info("tensor_parallel=%d: the loss is a vocab-parallel cross-entropy", plan.layout.tensor)
        return VocabParallelCrossEntropy()
    return loss


def assemble_model(fabric, config: RootConfig, plan: Plan, strategy, loss, adapter=None) -> nn.Module:
    """Steps 1-4 here, 5-9 in `parallelize` (sharding strategies) or `wrap_blocks` (the others)."""
    matmul, fast_accum = config.model.kernels.matmul, config.model.kernels.fp8_fast_accum  # refused before anything is built
    float8.check_matmul(matmul, float8.device_capability(fabric.device), plan.layout.tensor, fast_accum)
    torch.manual_seed(config.trainer.seed)  # identical init on every rank
    on_meta = strategy.init_on_meta(plan.parameters) and not config.model.init_from
    with fabric.init_module(empty_init=on_meta):
        model = registry.build(config.model, model_loss(loss, plan))  # 1
    if config.model.init_from:
        load_initial_weights(model, config.model.init_from)  # 2
    kernels = resolve_kernels(config.model.kernels, torch.device(plan.accelerator))
    apply_kernels(model, kernels)  # 3
    if adapter is not None:
        adapter.apply(model)  # 4
    sharded = strategy.sharding_options(plan.precision) is not None and plan.layout.shard > 1
    float8.convert_to_float8(model, matmul, fp8_all_gather=sharded, fast_accum=fast_accum)  # 4b: before FSDP wraps the weights
    if fabric.is_global_zero:
        log.info("attention kernel %s; kernels %s; compile %s", plan.attention_backend, kernels.names, use_compile(config, plan))
    if strategy.sharding_options(plan.precision) is None:
        wrap_blocks(model, config, plan)  # 6-7
    return fabric.setup_module(model)  # sharding strategies: Fabric calls `parallelize` (5-9)


def wrap_blocks(model: nn.Module, config: RootConfig, plan: Plan) -> None:
    """Steps 6-7: activation checkpointing, then torch.compile, per transformer block."""
    trainer = config.trainer
    if trainer.activation_checkpointing != "none":
        apply_activation_checkpointing(model, trainer.activation_checkpointing, trainer.activation_checkpointing_every)
    if use_compile(config, plan):
        compile_blocks(model)


def parallelize_fn(config: RootConfig, plan: Plan, strategy) -> Callable | None:
    """Steps 5-9 as the function Fabric's ModelParallelStrategy calls with its own mesh (ours is the
    3-D replicate x shard x tensor mesh the plan's layout describes); None for strategies that do
    not shard."""
    options = strategy.sharding_options(plan.precision)
    if options is None:
        return None
    layout = plan.layout

    def parallelize(model: nn.Module, fabric_mesh) -> nn.Module:
        device_type = fabric_mesh.device_type
        mesh = parallel.build_mesh(layout, device_type)
        on_meta = any(p.is_meta for p in model.parameters())
        leaves = parallel.leaf_modules(model) if on_meta else {}
        if layout.tensor > 1:
            parallel.apply_tensor_parallel(model, mesh["tensor"])  # 5
        wrap_blocks(model, config, plan)  # 6-7
        # Without sharding there is nothing to free after the forward, only gathers to repeat.
        reshard = options["reshard_after_forward"] and layout.shard > 1
        parallel.apply_fsdp(
            model,
            parallel.data_parallel_mesh(mesh, layout),
            bf16_compute=options["bf16_compute"],
            reshard_after_forward=reshard,
            prefetch=options["prefetch"],
            reduce_dtype=options.get("reduce_dtype", "fp32"),
        )  # 8
        if on_meta:
            parallel.initialise_shards(model, leaves, parallel.current_device(device_type), torch.initial_seed())  # 9
        return model

    return parallelize
