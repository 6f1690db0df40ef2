"""torch.compile per transformer block, compatible with packed-document attention.

Every block has the same code, so one compiled graph serves all of them (parameters are graph
inputs). A new batch brings a new document layout; what the attention backend derives from it
(a FlexAttention block mask, cu_seqlens) is built by a pre-forward hook that runs eagerly, so
the compiled graph only reads tensors of fixed shapes (or a cu_seqlens marked dynamic up front)
and is not recompiled per batch. `compile_stats()` reads torch._dynamo's counters to check it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from internlm.components.model import attention_backends
from internlm.document_layout import DocumentLayout
from internlm.runtime.activation_checkpointing import transformer_blocks


def _attention_backend_name(block: nn.Module) -> str | None:
    for module in block.modules():
        name = getattr(module, "backend_name", None)
        if isinstance(name, str):
            return name
    return None


def _prepare_layout(block: nn.Module, args: tuple, kwargs: dict) -> None:
    backend = block._compiled_attention_backend
    for value in (*args, *kwargs.values()):
        if isinstance(value, DocumentLayout):
            attention_backends.prepare(backend, value)


def compile_blocks(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Compile each block's forward in place (module names unchanged); returns the model.

    `compile_kwargs` go to torch.compile (tests pass backend="aot_eager" to stay fast on CPU).
    Apply activation checkpointing first: the checkpointed forward is what gets compiled.
    """
    for block in transformer_blocks(model):
        block._compiled_attention_backend = _attention_backend_name(block) or "auto"
        block.forward = torch.compile(block.forward, **compile_kwargs)
        block.register_forward_pre_hook(
            lambda module, args, kwargs: _prepare_layout(module, args, kwargs), with_kwargs=True
        )
    return model


def compile_stats() -> dict[str, int]:
    """Graphs compiled so far in this process and how many compiles were re-compiles."""
    counters = torch._dynamo.utils.counters
    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "frames_compiled": int(counters["frames"]["ok"]),
        "recompiles": int(sum(counters["recompiles"].values())),
    }
