"""Compile a composed config into a plan: typed, checked and with every derived number resolved.

`compile_plan(config, facts, strategy, scheduler)` is pure: the machine is described by `facts`
(probed once by the program), the strategy and scheduler are the run's own component objects
(built once by the program and handed on), and nothing here touches a process group, a device or
a data file: a bad config fails in a second, before any GPU time is spent. The model is built on
the meta device to count its parameters.
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
from internlm.components.eval.config import EvalSuiteConfig
from internlm.components.model import attention_backends
from internlm.components.model.matmul_precision import check_matmul
from internlm.components.strategy.base import ParallelLayout
from internlm.config import AC_POLICIES, LOGGERS, RootConfig
from internlm.errors import ConfigError
from internlm.planning import flops, memory
from internlm.planning.facts import Facts


@dataclass
class Plan:
    """The resolved numbers a run is made of (written to plan.yaml beside the config)."""

    world_size: int
    layout: ParallelLayout
    parameters: int
    accelerator: str
    precision: str
    attention_backend: str  # what model.attention.backend=auto resolved to on this machine
    trainable_parameters: int | None = None  # those that train (fewer than `parameters` under a LoRA)
    # The training plan (None for tasks that do not train: generate, export, serve, eval, ...)
    micro_batch_size: int | None = None
    grad_accumulation: int | None = None
    global_batch_size: int | None = None
    seq_len: int | None = None
    tokens_per_step: int | None = None
    warmup_steps: int | None = None
    total_tokens: int | None = None
    flops_per_token: float | None = None
    memory_per_device_gib: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # legal but probably unintended settings

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layout"] = dataclasses.asdict(self.layout) | {"dp_size": self.layout.dp_size}
        return out


def to_typed(cfg: DictConfig) -> RootConfig:
    """The composed DictConfig as dataclass instances (Hydra already checked types and keys;
    a component's config may check its values in __post_init__, raising ConfigError)."""
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # missing mandatory values surface here
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else exc.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"incomplete config: {exc}", fix="set the value named above with key=value") from None


def resolve_accelerator(requested: str, facts: Facts) -> str:
    if requested == "auto":
        return "cuda" if facts.cuda_available else "cpu"
    if requested == "gpu":
        return "cuda"
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"unknown accelerator '{requested}'", where="trainer.accelerator", fix="use auto, cpu or cuda")
    if requested == "cuda" and not facts.cuda_available:
        raise ConfigError(
            "trainer.accelerator=cuda, but this machine has no usable CUDA device",
            where="trainer.accelerator",
            fix="use trainer.accelerator=auto (or cpu) here, or run on a GPU machine",
        )
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
    check_positive(
        {
            "model.num_layers": model_cfg.num_layers,
            "model.hidden_size": model_cfg.hidden_size,
            "model.vocab_size": model_cfg.vocab_size,
            "model.attention.num_heads": attn.num_heads,
            "model.attention.num_kv_heads": attn.num_kv_heads,
            "model.mlp.intermediate_size": model_cfg.mlp.intermediate_size,
        }
    )
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
    policy = cfg.trainer.activation_checkpointing
    if policy not in AC_POLICIES:
        raise ConfigError(
            f"unknown activation checkpointing policy '{policy}'",
            where="trainer.activation_checkpointing",
            fix=f"choose one of: {', '.join(AC_POLICIES)}",
        )
    unknown = [name for name in cfg.trainer.loggers if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"unknown logger(s) {unknown}", where="trainer.loggers", fix=f"choose from {list(LOGGERS)}")


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


def count_parameters(model_cfg, adapter_cfg=None) -> tuple[int, int, int]:
    """(all parameters, trainable ones, the base model's) with the adapter applied, built on the
    meta device; a LoRA target that matches no module is refused here, before anything runs."""
    with torch.device("meta"):
        model = registry.build(model_cfg)
        base = sum(p.numel() for p in model.parameters())
        if adapter_cfg is not None:
            registry.build(adapter_cfg).apply(model)
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad), base


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


def compile_plan(cfg: RootConfig, facts: Facts, strategy, scheduler=None, trains: bool = True, allocates: bool = True) -> Plan:
    """The plan of a run of `cfg` on the machine `facts` describes. `strategy` and `scheduler` are
    the run's component objects; `trains=False` (a task that only reads a model) leaves out the
    batch layout, the schedule and the memory estimate. `allocates=False` (task=plan: a plan for
    another machine, shown here) reports a plan that does not fit this one instead of refusing it."""
    trainer = cfg.trainer
    check_positive({"trainer.devices": trainer.devices, "trainer.num_nodes": trainer.num_nodes})
    check_names(cfg)
    accelerator = resolve_accelerator(trainer.accelerator, facts)
    precision = resolve_precision(trainer.precision, accelerator)
    world_size = trainer.devices * trainer.num_nodes
    layout = strategy.layout(world_size)
    check_model(cfg.model)
    strategy.check_model(cfg.model, layout)  # e.g. heads divisible by the tensor-parallel size
    kernels = cfg.model.kernels
    check_matmul(kernels.matmul, facts.capability if accelerator == "cuda" else None, layout.tensor, kernels.fp8_fast_accum)
    check_tokenizer_fits(facts.tokenizer_vocab, cfg.model)
    available = facts.attention.get(accelerator, {})
    backend = attention_backends.choose(cfg.model.attention.backend, accelerator, available)
    parameters, trainable, base = count_parameters(cfg.model, getattr(cfg, "adapter", None))
    plan = Plan(
        world_size=world_size,
        layout=layout,
        parameters=parameters,
        trainable_parameters=trainable,
        accelerator=accelerator,
        precision=precision,
        attention_backend=backend,
    )
    plan.warnings = advisories(cfg, plan.parameters)
    if trains:
        check_training_eval(cfg, facts)
        # a frozen DPO reference is a second copy of the base model, without adapters
        reference = base if getattr(cfg.task, "reference", None) == "frozen" else 0
        add_training_plan(plan, cfg, scheduler, reference)
        try:
            check_fits(plan, facts)
        except ConfigError as exc:
            if allocates:
                raise
            plan.warnings.append(f"on this machine: {exc.what}")
    return plan


def check_training_eval(cfg: RootConfig, facts: Facts) -> None:
    """trainer.eval_every and the suite it scores during training, from the config and the probed
    tokenizer alone. The suite's files are read when training starts (compile opens no data file)."""
    every = cfg.trainer.eval_every
    if every < 0:
        raise ConfigError(f"trainer.eval_every={every}", where="trainer.eval_every", fix="0 (never) or a number of steps")
    if not every:
        return
    suite = getattr(cfg, "eval", None)
    if not isinstance(suite, EvalSuiteConfig) or not suite.datasets:
        raise ConfigError("trainer.eval_every is set but no evaluation suite is chosen", where="eval",
                          fix="add eval=<suite or dataset of conf/eval/> (e.g. eval=mmlu eval.limit=100), or trainer.eval_every=0")
    chat = [name for name, dataset in suite.datasets.items() if (dataset.chat if suite.chat is None else suite.chat)]
    if chat and facts.tokenizer_chat_markers is False:
        raise ConfigError(f"{', '.join(chat)} use(s) the chat template, the model's tokenizer has none", where="eval",
                          fix="choose a base suite (eval=base_suite), or set chat: false for those datasets")


def add_training_plan(plan: Plan, cfg: RootConfig, scheduler, reference_parameters: int = 0) -> None:
    """The batch layout, schedule, FLOPs and memory of a training run."""
    trainer = cfg.trainer
    check_positive(
        {
            "data.seq_len": cfg.data.seq_len,
            "data.global_batch_size": cfg.data.global_batch_size,
            "data.micro_batch_size": cfg.data.micro_batch_size,
            "trainer.max_steps": trainer.max_steps,
            "trainer.log_every": trainer.log_every,
            "trainer.max_consecutive_skips": trainer.max_consecutive_skips,
            "trainer.collective_timeout_s": trainer.collective_timeout_s,
        }
    )
    seq_len = cfg.data.seq_len
    max_position = cfg.model.attention.rotary.max_position
    if seq_len > max_position:
        raise ConfigError(
            f"data.seq_len {seq_len} exceeds the rotary range model.attention.rotary.max_position={max_position}",
            where="data.seq_len",
            fix=f"shorten data.seq_len or raise model.attention.rotary.max_position to {seq_len}",
        )
    micro, accumulation = derive_batches(cfg.data, plan.layout.dp_size)
    plan.micro_batch_size, plan.grad_accumulation = micro, accumulation
    plan.global_batch_size = cfg.data.global_batch_size
    plan.seq_len = seq_len
    plan.tokens_per_step = cfg.data.global_batch_size * seq_len
    plan.total_tokens = plan.tokens_per_step * trainer.max_steps
    plan.warmup_steps = scheduler.warmup_steps(trainer.max_steps)
    plan.flops_per_token = flops.flops_per_token(cfg.model, seq_len)
    plan.memory_per_device_gib = memory.estimate_per_device(
        cfg.model, plan.parameters, plan.layout, micro, seq_len, plan.precision, trainer.activation_checkpointing,
        full_logits=registry.component_of(cfg.loss).name == "cross_entropy",
        attention_backend=plan.attention_backend,
        matmul=cfg.model.kernels.matmul,
        trainable=plan.trainable_parameters,
        reference_parameters=reference_parameters,
        grad_accumulation=accumulation,
        master_weights=bool(getattr(cfg.optimizer, "master_weights", False)),
    )


# PyTorch's caching allocator reserves more than it hands out (reserved / allocated peak: 1.03 on
# the 7B DPO runs on an H200): a plan within that of the device's memory runs out at its peak
ALLOCATOR_SLACK = 1.05


def check_fits(plan: Plan, facts: Facts) -> None:
    """Refuse a run whose estimate exceeds the device's memory (the kernel would kill it at the
    first step, or CUDA would run out), with the numbers that say why."""
    available = facts.device_memory_gib.get(plan.accelerator)
    need = plan.memory_per_device_gib.get("total", 0.0)
    if available is None or need * ALLOCATOR_SLACK <= available:
        return
    parts = ", ".join(f"{k} {v:,.1f}" for k, v in plan.memory_per_device_gib.items() if k != "total" and v >= 0.05)
    raise ConfigError(
        f"the run needs about {need:,.1f} GiB per {plan.accelerator} device ({parts}), "
        f"and the allocator's ~5% slack on top, but the device has {available:,.1f} GiB",
        where="data.micro_batch_size / data.seq_len / trainer.activation_checkpointing / model",
        fix="use a smaller data.micro_batch_size or data.seq_len, trainer.activation_checkpointing=full, "
        "a fused loss (loss=chunked), a sharding strategy over more devices, or a non-dense attention backend on a GPU",
    )


def write_plan(path: Path, cfg: DictConfig, plan: Plan) -> None:
    """plan.yaml: the fully resolved config and the derived numbers, written atomically."""
    document = {"config": OmegaConf.to_container(cfg, resolve=True), "plan": plan.as_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # every rank writes it: no shared temp name
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)
