"""The root schema: what `conf/config.yaml` composes, typed.

Each component group (task, model, tokenizer, data, objective, optimizer, scheduler, loss,
strategy) holds one registered component's config; Hydra checks every value against that
component's dataclass while composing. `trainer` is the one fixed schema: how the program runs,
whatever the task. A task's own options live under `task.*` (its config dataclass).

Ground floor: this module imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore

LOGGERS = ("csv", "tensorboard")  # what trainer.loggers may name
AC_POLICIES = ("none", "full", "selective", "op")  # trainer.activation_checkpointing


@dataclass
class TrainerConfig:
    max_steps: int = 200  # optimizer steps
    accelerator: str = "auto"  # auto | cpu | cuda (auto = cuda when available)
    devices: int = 1  # processes (devices) per node
    num_nodes: int = 1  # nodes; world size = devices x num_nodes
    precision: str = "auto"  # auto (32-true on CPU, bf16-mixed on GPU) | 32-true | bf16-mixed | bf16-true
    seed: int = 42  # seeds init, data order and sampling
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    log_every: int = 10  # steps between metric rows (CSV, TensorBoard, console)
    val_every: int = 100  # steps between validation passes; 0 = never
    val_batches: int = 8  # micro batches per validation pass
    eval_every: int = 0  # steps between passes of the eval=<suite> (conf/eval/), logged as eval/<dataset>/<metric>; 0 = never
    checkpoint_every: int = 100  # steps between checkpoints; 0 = only at the end; -1 = never (benchmarks)
    keep_checkpoints: int = 3  # newest checkpoints kept in the run folder
    async_checkpoint: bool = False  # write checkpoints in a background thread; committed once written
    resume: str | None = None  # null | auto (newest complete checkpoint in the run folder) | a checkpoint path
    stop_file: str | None = None  # when this file exists, save a checkpoint after the current step and stop (InternLM's stop_file_path)
    activation_checkpointing: str = "none"  # none | full | selective (every k-th block) | op (keep matmul outputs)
    activation_checkpointing_every: int = 1  # selective: recompute every k-th block
    compile: bool | None = None  # torch.compile each block; null = on for GPUs, off on CPU
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])  # csv | tensorboard
    progress_bar: bool | None = None  # null = when the console is a terminal
    peak_tflops: float | None = None  # device peak for MFU; null = looked up from the device name
    sample_prompt: str = "To be, or not to be"  # generated from at the end of training ("" = none)
    sample_tokens: int = 48  # tokens of that sample
    # how long a collective waits for the other processes (gloo and NCCL's process-group timeout): a
    # rank that stops answering (frozen, its node unreachable) ends the run after this, not torch's 30 min
    collective_timeout_s: float = 1800.0
    max_consecutive_skips: int = 5  # non-finite steps in a row before rolling back to the last good checkpoint (or stopping)
    spike_factor: float = 3.0  # report a loss above this many times its running mean; 0 = off


@dataclass
class DebugConfig:
    """Fault injection for tests and campaigns (internlm/runtime/faults.py); off by default."""

    inject_nan_steps: list[int] = field(default_factory=list)  # steps (1-based, as logged) whose loss and gradients become NaN
    fail_checkpoint_at_step: int | None = None  # an I/O error while writing this step's checkpoint
    fail_checkpoint_rank: int | None = None  # only this global rank hits that error; null = every rank
    slow_checkpoint_s: float = 0.0  # sleep this long inside every checkpoint write (widens the window for kill tests)


@dataclass
class RootConfig:
    task: Any = None
    model: Any = None
    tokenizer: Any = None
    data: Any = None
    objective: Any = None  # what a training step computes (next_token, dpo, ...)
    adapter: Any = None  # adapters applied after the build (none, lora): only their parameters train
    optimizer: Any = None
    scheduler: Any = None
    loss: Any = None
    strategy: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)  # fault injection, off by default
    checkpoint: str | None = None  # what inference tasks read: a run folder, a checkpoint folder or hf:<dir>
    eval: Any = None  # an evaluation suite or dataset of conf/eval/ (task=eval, eval=mmlu); a schema, not a component


# The groups that hold a registered component (typed Any above: each holds its own dataclass).
COMPONENT_GROUPS = tuple(f.name for f in fields(RootConfig) if f.type == "Any" and f.name != "eval")


def store_root_schema() -> None:
    ConfigStore.instance().store(name="root_schema", node=RootConfig)
