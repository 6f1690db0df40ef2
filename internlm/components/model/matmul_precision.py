"""Which matmul precision the model's blocks may use on a machine (`model.kernels.matmul`).

A pure check (no torch, no torchao import), so compile can refuse fp8 from the probed facts before
anything is built; internlm/runtime/float8.py does the conversion.
"""

from __future__ import annotations

import importlib.util

from internlm.errors import ConfigError

MATMULS = ("bf16", "fp8_tensorwise", "fp8_rowwise")
MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9) and Hopper (9.0) onwards
WHERE = "model.kernels.matmul"
BF16_FIX = f"use {WHERE}=bf16"
# Which fp8 gemms accumulate in the tensor cores' own precision (`use_fast_accum`), never promoted to
# fp32 inside the K loop: faster, less exact. `forward` is torchao's default (the output gemm only);
# `all` adds the backward's input- and weight-gradient gemms (bench/fp8_fast_accum.py, RESULTS.md).
FAST_ACCUM = ("forward", "all", "none")
FAST_ACCUM_WHERE = "model.kernels.fp8_fast_accum"


def torchao_unavailable() -> str | None:
    """None when torchao's float8 training can be imported, else why not (no import is done)."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed; install the fp8 extra: pip install 'internlm[fp8]' (or pip install torchao)"
    return None


def check_matmul(matmul: str, capability: tuple[int, int] | None, tensor_parallel: int = 1, fast_accum: str = "forward") -> None:
    """Refuse an unknown choice, or fp8 where it cannot run, before anything heavy is built.

    `capability` is the CUDA compute capability of the device that will train (None: no CUDA
    device, e.g. CPU training)."""
    if fast_accum not in FAST_ACCUM:
        raise ConfigError(
            f"unknown fp8 fast-accumulation choice '{fast_accum}'", where=FAST_ACCUM_WHERE, fix=f"choose one of: {', '.join(FAST_ACCUM)}"
        )
    if matmul not in MATMULS:
        raise ConfigError(f"unknown matmul precision '{matmul}'", where=WHERE, fix=f"choose one of: {', '.join(MATMULS)}")
    if matmul == "bf16":
        return
    if capability is None or tuple(capability) < MIN_CAPABILITY:
        found = "no CUDA device" if capability is None else f"a device of compute capability {capability[0]}.{capability[1]}"
        raise ConfigError(
            f"{WHERE}={matmul} needs fp8 tensor cores (compute capability >= 8.9: Ada, Hopper or newer), found {found}",
            where=WHERE,
            fix=BF16_FIX,
        )
    if reason := torchao_unavailable():
        raise ConfigError(f"{WHERE}={matmul}: {reason}", where=WHERE, fix=f"install torchao, or {BF16_FIX}")
    if tensor_parallel > 1:
        raise ConfigError(
            f"{WHERE}={matmul} is not supported with tensor parallelism (tensor_parallel={tensor_parallel})",
            where=WHERE,
            fix=f"{BF16_FIX}, or train without tensor parallelism (FSDP / hybrid_zero shard the fp8 model)",
        )
