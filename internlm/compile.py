"""Compile a composed config into a plan: typed, checked and with every derived number resolved.

Nothing here touches a process group, a device or a data file: a bad config fails in a second,
before any GPU time is spent. The model is built on the meta device to count its parameters.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from internlm import registry
from internlm.components.strategy.base import ParallelLayout
from internlm.config import RootConfig
from internlm.errors import ConfigError
from internlm.runtime import flops, memory


@dataclass
class Plan:
    """The resolved numbers a run is made of (written to plan.yaml beside the config)."""

    world_size: int
    layout: ParallelLayout
    micro_batch_size: int
    grad_accumulation: int
    global_batch_size: int
    seq_len: int
    tokens_per_step: int
    warmup_steps: int
    total_tokens: int
    parameters: int
    flops_per_token: float
    accelerator: str
    precision: str
    attention_backend: str  # what model.attention.backend=auto resolved to on this machine
    memory_per_device_gib: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # legal but probably unintended settings

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layout"] = dataclasses.asdict(self.layout) | {"dp_size": self.layout.dp_size}
        return out


def to_typed(cfg: DictConfig) -> RootConfig:
    """The composed DictConfig as dataclass instances (Hydra already checked types and keys)."""
    try:
        return OmegaConf.to_object(cfg)
    except Exception as exc:  # missing mandatory values surface here
        raise ConfigError(f"incomplete config: {exc}", fix="set the value named above with key=value") from None


def resolve_accelerator(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "gpu":
        return "cuda"
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"unknown accelerator '{requested}'", where="trainer.accelerator", fix="use auto, cpu or cuda")
    return requested


def resolve_precision(requested: str, accelerator: str) -> str:
    if requested == "auto":
        return "bf16-mixed" if accelerator == "cuda" else "32-true"
    allowed = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
    if requested not in allowed:
        raise ConfigError(f"unknown precision '{requested}'", where="trainer.precision", fix=f"use auto or one of {allowed}")
    return requested


def check_model(model_cfg) -> None:
    attn = model_cfg.attention
    if model_cfg.hidden_size % attn.num_heads:
        raise ConfigError(
            f"hidden_size {model_cfg.hidden_size} is not divisible by num_heads {attn.num_heads}",
            where="model.hidden_size / model.attention.num_heads",
            fix="pick num_heads that divides hidden_size",
        )
    head_dim = model_cfg.hidden_size // attn.num_heads
    if head_dim % 2:
        raise ConfigError(f"head dim {head_dim} is odd; rotary embeddings need an even head dim", where="model.attention.num_heads")
    kv = attn.num_kv_heads or attn.num_heads
    if attn.num_heads % kv:
        raise ConfigError(
            f"num_heads {attn.num_heads} is not a multiple of num_kv_heads {kv}",
            where="model.attention.num_kv_heads",
            fix="grouped-query attention needs num_heads divisible by num_kv_heads",
        )


def check_tokenizer_fits(tokenizer_vocab: int | None, model_cfg) -> None:
    if tokenizer_vocab is not None and tokenizer_vocab > model_cfg.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is {model_cfg.vocab_size}",
            where="tokenizer / model.vocab_size",
            fix=f"set model.vocab_size={tokenizer_vocab} (or more), or use a matching tokenizer",
        )


def check_positive(values: dict[str, int | None]) -> None:
    for key, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be at least 1", where=key, fix=f"set {key} to a positive number")


def check_names(cfg: RootConfig) -> None:
    """Names that only a later stage would reject: reject them now, before any device is touched."""
    from internlm.runtime.activation_checkpointing import POLICIES
    from internlm.runtime.fabric_setup import LOGGERS

    policy = cfg.trainer.activation_checkpointing
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown activation checkpointing policy '{policy}'",
            where="trainer.activation_checkpointing",
            fix=f"choose one of: {', '.join(POLICIES)}",
        )
    unknown = [name for name in cfg.trainer.loggers if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"unknown logger(s) {unknown}", where="trainer.loggers", fix=f"choose from {list(LOGGERS)}")
    registry.build(cfg.optimizer)  # resolves optimizer.target against the allowlist


def derive_batches(data_cfg, dp_size: int) -> tuple[int, int]:
    """(micro batch per device, accumulation steps) keeping the global batch fixed."""
    global_batch = data_cfg.global_batch_size
    if global_batch % dp_size:
        raise ConfigError(
            f"data.global_batch_size {global_batch} is not divisible by the {dp_size} data-parallel ranks",
            where="data.global_batch_size",
            fix=f"use a multiple of {dp_size}",
        )
    per_rank = global_batch // dp_size
    micro = data_cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"each of the {dp_size} data-parallel ranks gets {per_rank} rows per step, "
            f"not a multiple of data.micro_batch_size={micro}",
            where="data.micro_batch_size",
            fix=f"use a divisor of {per_rank}",
        )
    return micro, per_rank // micro


def count_parameters(model_cfg) -> int:
    with torch.device("meta"):
        model = registry.build(model_cfg)
    return model.num_parameters()


def advisories(cfg: RootConfig, parameters: int) -> list[str]:
    """Settings that are valid but rarely what a user means."""
    notes = []
    lr = getattr(cfg.optimizer, "lr", None)
    if lr is not None and lr > 1e-3 and parameters > 1_000_000_000:
        notes.append(
            f"optimizer.lr={lr:g} is the tiny default's rate; billion-parameter models diverge at it "
            "(InternLM-7B trained at 1e-4): set optimizer.lr=1e-4"
        )
    return notes


def compile_plan(cfg: RootConfig, tokenizer_vocab: int | None = None) -> Plan:
    trainer = cfg.trainer
    check_positive(
        {
            "data.seq_len": cfg.data.seq_len,
            "data.global_batch_size": cfg.data.global_batch_size,
            "data.micro_batch_size": cfg.data.micro_batch_size,
            "trainer.max_steps": trainer.max_steps,
            "trainer.log_every": trainer.log_every,
            "trainer.devices": trainer.devices,
            "trainer.num_nodes": trainer.num_nodes,
        }
    )
    check_names(cfg)
    accelerator = resolve_accelerator(trainer.accelerator)
    precision = resolve_precision(trainer.precision, accelerator)
    world_size = trainer.devices * trainer.num_nodes
    strategy = registry.build(cfg.strategy)
    layout = strategy.layout(world_size)
    check_model(cfg.model)
    strategy.check_model(cfg.model, layout)  # e.g. heads divisible by the tensor-parallel size
    check_tokenizer_fits(tokenizer_vocab, cfg.model)
    seq_len = cfg.data.seq_len
    max_position = cfg.model.attention.rotary.max_position
    if seq_len > max_position:
        raise ConfigError(
            f"data.seq_len {seq_len} exceeds the rotary range model.attention.rotary.max_position={max_position}",
            where="data.seq_len",
            fix=f"shorten data.seq_len or raise model.attention.rotary.max_position to {seq_len}",
        )
    from internlm.components.model import attention_backends

    backend = attention_backends.resolve(cfg.model.attention.backend, torch.device(accelerator)).name
    micro, accumulation = derive_batches(cfg.data, layout.dp_size)
    parameters = count_parameters(cfg.model)
    per_token = flops.flops_per_token(cfg.model, seq_len)
    tokens_per_step = cfg.data.global_batch_size * seq_len
    warmup = registry.build(cfg.scheduler).warmup_steps(trainer.max_steps)
    estimate = memory.estimate_per_device(
        cfg.model, parameters, layout, micro, seq_len, precision, trainer.activation_checkpointing,
        full_logits=registry.component_of(cfg.loss).name == "cross_entropy",
    )
    return Plan(
        world_size=world_size,
        layout=layout,
        micro_batch_size=micro,
        grad_accumulation=accumulation,
        global_batch_size=cfg.data.global_batch_size,
        seq_len=seq_len,
        tokens_per_step=tokens_per_step,
        warmup_steps=warmup,
        total_tokens=tokens_per_step * trainer.max_steps,
        parameters=parameters,
        flops_per_token=per_token,
        accelerator=accelerator,
        precision=precision,
        attention_backend=backend,
        memory_per_device_gib=estimate,
        warnings=advisories(cfg, parameters),
    )


def write_plan(path: Path, cfg: DictConfig, plan: Plan) -> None:
    """plan.yaml: the fully resolved config and the derived numbers, written atomically."""
    document = {"config": OmegaConf.to_container(cfg, resolve=True), "plan": plan.as_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # every rank writes it: no shared temp name
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)
