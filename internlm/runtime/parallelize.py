"""Parallelism applied to a built Transformer from outside (the model knows nothing of meshes).

    mesh = build_mesh(layout, "cuda")                  # replicate x shard x tensor
    apply_tensor_parallel(model, mesh["tensor"])        # DTensor colwise/rowwise, sequence-parallel norms
    apply_fsdp(model, data_parallel_mesh(mesh, layout)) # FSDP2 per block + root; HSDP on a 2-D mesh
    initialise_shards(model, leaves, device)            # meta-device models only

Order matters as in torchtitan: tensor parallelism first (it replaces parameters with DTensors),
then FSDP2 shards those over the data-parallel dimensions. The order of these steps among all the
others lives in one place: `internlm/runtime/assembly.py`.

Sequence parallelism: between blocks the residual stream is split along the sequence across the
tensor-parallel ranks ([B, S/tp, H]); each attention and MLP gathers it, and its row-parallel
output projection reduce-scatters back. The final norm's output is gathered for the LM head, whose
rows (the vocabulary) stay split: the loss is a vocab-parallel cross-entropy.
"""

from __future__ import annotations

import copy
import inspect
import logging
import types
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from internlm.batch import IGNORE_INDEX
from internlm.components.strategy.base import ParallelLayout

MESH_DIMS = ("replicate", "shard", "tensor")
log = logging.getLogger("internlm")


def build_mesh(layout: ParallelLayout, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (layout.replicate, layout.shard, layout.tensor), mesh_dim_names=MESH_DIMS)


def data_parallel_mesh(mesh, layout: ParallelLayout):
    """2-D (replicate, shard) for HSDP; 1-D (shard) when there is a single replica (plain FSDP)."""
    return mesh["replicate", "shard"] if layout.replicate > 1 else mesh["shard"]


def _block_plan():
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel

    gather_sequence = dict(desired_input_layouts=(Replicate(), None, None))
    return {
        "input_layernorm": SequenceParallel(),
        # (x, document layout, rope): only x is a sequence-split tensor
        "self_attn": PrepareModuleInput(input_layouts=(Shard(1), None, None), **gather_sequence),
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
        "post_attention_layernorm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
    }


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Megatron-style tensor parallelism with sequence-parallel norms; the LM head's rows (the
    vocabulary) stay split, so the model must have been built with a vocab-parallel loss."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleOutput, RowwiseParallel, SequenceParallel, parallelize_module

    tp = tp_mesh.size()
    parallelize_module(
        model,
        tp_mesh,
        {
            "embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            # Only the logits path (no labels) calls the head module: it gathers the vocabulary.
            "lm_head": ColwiseParallel(output_layouts=Replicate()),
        },
    )
    # The head and the in-forward loss take the whole sequence: gather the final norm's output.
    parallelize_module(model.norm, tp_mesh, PrepareModuleOutput(output_layouts=Shard(1), desired_output_layouts=Replicate()))
    plan = _block_plan()
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, plan)
        attention = block.self_attn  # its projections now return this rank's heads only
        attention.num_heads //= tp
        attention.num_kv_heads //= tp
    pad_sequence_to_multiple(model, tp)


def pad_sequence_to_multiple(model: nn.Module, multiple: int) -> None:
    """Sequence parallelism splits the sequence evenly: pad a length that is not a multiple of the
    tensor-parallel size (a generation prompt) at the end, and crop the logits back. The padding
    continues the last document, so causal attention keeps it out of every real token's view, and
    its labels take no loss."""
    signature = inspect.signature(type(model).forward)

    def pad(module, args, kwargs):
        bound = signature.bind(module, *args, **kwargs)
        values = dict(bound.arguments)
        values.pop("self", None)
        values |= values.pop("kwargs", {})
        input_ids = values["input_ids"]
        missing = -input_ids.shape[1] % multiple
        if not missing:
            return None
        positions = values.get("position_ids")
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        steps = torch.arange(1, missing + 1, device=positions.device)
        values["input_ids"] = F.pad(input_ids, (0, missing))
        values["position_ids"] = torch.cat([positions, positions[:, -1:] + steps], dim=1)
        if values.get("labels") is not None:
            values["labels"] = F.pad(values["labels"], (0, missing), value=IGNORE_INDEX)
        if "cu_seqlens" in values:  # the document boundaries moved: the backend derives them again
            values["cu_seqlens"], values["max_seqlen"] = None, None
        module._unpadded_length = input_ids.shape[1]
        return (), values

    def crop(module, args, kwargs, output):
        length = module.__dict__.pop("_unpadded_length", None)
        if length is not None and output.dim() == 3:  # logits; a loss needs no cropping
            return output[:, :length]
        return None

    model.register_forward_pre_hook(pad, with_kwargs=True)
    model.register_forward_hook(crop, with_kwargs=True)


def apply_fsdp(
    model: nn.Module,
    dp_mesh,
    *,
    bf16_compute: bool = False,
    reshard_after_forward: bool = True,
    prefetch: int = 1,
    reduce_dtype: str = "fp32",
) -> None:
    """FSDP2 units: the embedding, each block, and the root (final norm + LM head, which the
    in-forward loss reads as a weight, so they must be gathered by the root's forward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 gathers and compute, fp32 gradient reduction and master weights (torchtitan's choice).
    # reduce_dtype="bf16" halves the gradient bytes on the wire (strategy.reduce_dtype).
    reduce = torch.bfloat16 if reduce_dtype == "bf16" else torch.float32
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce) if bf16_compute else MixedPrecisionPolicy()
    units: list[nn.Module] = []
    if not model.config.tie_embeddings:  # a tied embedding is the head's weight: it stays with the root
        fully_shard(model.embed_tokens, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        units.append(model.embed_tokens)
    blocks = list(model.layers.values())
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1  # the backward starts with it: keep it gathered
        fully_shard(block, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward and not last)
    units += blocks
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if prefetch > 0:
        for index, unit in enumerate(units):
            ahead = units[index + 1 : index + 1 + prefetch]
            behind = units[max(0, index - prefetch) : index][::-1]
            if ahead:
                unit.set_modules_to_forward_prefetch(ahead)
            if behind:
                unit.set_modules_to_backward_prefetch(behind)


def leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Copies of the modules that own parameters, taken while the model is on the meta device
    (free), as templates for initialising each full tensor once, shard by shard."""
    return {
        name: copy.deepcopy(module)
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    }


def module_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def initialise_shards(model: nn.Module, leaves: dict[str, nn.Module], device: torch.device, seed: int) -> None:
    """Materialise a sharded meta-device model and initialise it by the model's own rules
    (consumes `leaves`, from `leaf_modules`).

    For each module with parameters, a full-size copy is initialised on `device` from a seed of
    (seed, module name) and each rank keeps its shard: the result is the same at any world size or
    mesh, and each full tensor exists only briefly on one device (the largest: the embedding). It is
    not the one-process init's random stream (that one draws module after module in order).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.to_empty(device=device)
    init_rule = getattr(type(model), "init_weights", None)
    for name in list(leaves):
        full = leaves.pop(name).to_empty(device=device)  # popped: freed once its shard is copied
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(module_seed(seed, name))
            if init_rule is not None:  # the model's rule for this one module (it keys on type and name)
                init_rule(types.SimpleNamespace(config=model.config, named_modules=lambda: [(name, full)]))
            elif hasattr(full, "reset_parameters"):
                full.reset_parameters()
        target = model.get_submodule(name)
        for param_name, value in full.named_parameters(recurse=False):
            param = getattr(target, param_name)
            if isinstance(param, DTensor):
                shard = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(shard.to_local())
            else:
                param.copy_(value)
    for module in model.modules():  # buffers (rotary frequencies) are not sharded: recompute them
        if any(True for _ in module.buffers(recurse=False)) and hasattr(module, "reset_parameters"):
            if not any(True for _ in module.parameters(recurse=False)):
                module.reset_parameters()


def current_device(device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)
