"""The one training loop, shared by every training task (pretrain, sft, dpo, ...).

What a step computes is the objective's business (`internlm/components/objective/`); everything
else is here: resume, gradient accumulation, normalisation over the global batch, clipping, the
optimizer and schedule, validation, metrics, progress and checkpoints.

Each optimizer step draws `grad_accumulation` micro batches per data-parallel rank and divides the
summed loss by the objective's units (labelled tokens, pairs, ...) of the whole global batch, so 1
or N devices, with any accumulation, optimise and report exactly the same numbers.
"""

from __future__ import annotations

import logging
import math
import os

import torch

from internlm.batch import Batch
from internlm.components.objective.base import Objective
from internlm.runtime import checkpoint, faults, optimizer_step, training_eval
from internlm.runtime.assembly import use_compile
from internlm.runtime.console import Console
from internlm.runtime.generation import generate
from internlm.runtime.health import Health
from internlm.runtime.metrics import StepTimer, keep_csv_history, peak_memory_gib, throughput
from internlm.runtime.preemption import StopRequest

log = logging.getLogger("internlm")


class StepReducer:
    """Sums over this rank's micro batches, made global: tensor-parallel peers hold the same rows,
    so a sum over all ranks counts each row `tensor` times."""

    def __init__(self, fabric, plan):
        self.fabric, self.plan = fabric, plan

    def total(self, value: torch.Tensor) -> torch.Tensor:
        if self.plan.world_size == 1:
            return value
        return self.fabric.all_reduce(value, reduce_op="sum") / self.plan.layout.tensor


def fit(ctx, objective: Objective | None = None) -> dict:
    """Train `ctx.parts.model` on `ctx.parts.data` with `objective` (default: the configured one)
    until trainer.max_steps; returns {"losses": per-step train losses, "sample": generated text}.
    Rank 0 holds the run folder's lock throughout: a second process on it is refused."""
    lock = checkpoint.RunFolderLock(ctx.run_dir).acquire() if ctx.parts.fabric.is_global_zero else None
    try:
        return _fit(ctx, objective)
    finally:
        if lock is not None:
            lock.release()


def _fit(ctx, objective: Objective | None) -> dict:
    trainer, plan, parts = ctx.config.trainer, ctx.plan, ctx.parts
    objective = objective or parts.objective
    fabric = parts.fabric
    dp_rank = fabric.global_rank // plan.layout.tensor  # tensor-parallel peers read the same rows
    # Data first: a missing or corrupt file is reported before the model takes any memory.
    loader = parts.data.train_loader(
        micro_batch_size=plan.micro_batch_size, dp_rank=dp_rank, dp_size=plan.layout.dp_size, seed=trainer.seed
    )
    val_rows = validation_rows(ctx, dp_rank)
    evaluation = training_eval.prepare(ctx.config, parts.tokenizer)  # trainer.eval_every + eval=<suite>; None when off
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
    health = Health(trainer.max_consecutive_skips, trainer.spike_factor)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader, "health": health, "step": 0}
    start_step = resume(ctx, state)

    if fabric.is_global_zero:
        log.info(
            "training %s parameters on %d %s device(s), %s tokens/step, run folder %s",
            f"{plan.parameters:,}", plan.world_size, plan.accelerator, f"{plan.tokens_per_step:,}", ctx.run_dir,
        )
    reducer = StepReducer(fabric, plan)
    console = Console(fabric, trainer, start_step)
    timer = StepTimer(fabric.device)
    history: list[float] = []
    # USR2 (Slurm preemption), SIGTERM or trainer.stop_file: every rank stops after the same step, with a checkpoint.
    stop = StopRequest(trainer.stop_file, requeue=bool(trainer.resume)).install()
    done = start_step
    for step in range(start_step, trainer.max_steps):
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it after)
        batches = [next(loader) for _ in range(plan.grad_accumulation)]
        done = step + 1
        loss, grad_norm, step_metrics, updated = train_step(
            fabric, plan, reducer, objective, model, optimizer, batches, trainer.grad_clip,
            health=health, step=done, poison=faults.nan_factor(ctx.config, done),
        )
        if updated:  # a skipped step leaves the schedule where it was, as it leaves the weights
            scheduler.step()
        seconds = timer.lap()
        history.append(loss)
        metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm} | health.metrics()
        if step == start_step:  # compilation and warm-up land here: a warm compile cache shows
            metrics["perf/first_step_s"] = seconds
            if fabric.is_global_zero:
                cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default")
                log.info("first step took %.1f s%s", seconds, f" (compile cache: {cache})" if use_compile(ctx.config, plan) else "")
        metrics |= {f"train/{name}": value for name, value in step_metrics.items()}
        metrics |= {f"perf/{k}": v for k, v in speed(ctx, seconds).items()}
        metrics |= loader.metrics()  # data/epoch, data/mix/<source> for mixtures
        if val_rows and trainer.val_every and (done % trainer.val_every == 0 or done == trainer.max_steps):
            metrics |= validate(fabric, reducer, objective, model, val_rows)
            timer.lap()  # validation time is not training time
        evaluating = evaluation is not None and evaluation.due(done)
        if evaluating:
            metrics |= evaluation.run(model)  # eval/<dataset>/<metric>
            timer.lap()
        if done % trainer.log_every == 0 or done == trainer.max_steps or "val/loss" in metrics or evaluating:
            fabric.log_dict(metrics, step=done)
        console.update(done, metrics)
        if health.exhausted():
            roll_back(ctx, state, health, done)
        stopping = stop.should_stop(fabric)
        if checkpoint_due(trainer, done) or stopping:
            state["step"] = done
            checkpoint.save(
                fabric, ctx.run_dir, done, state, ctx.raw, ctx.components, trainer.keep_checkpoints,
                async_save=trainer.async_checkpoint,
            )
            timer.lap()
        if stopping:
            break
    checkpoint.wait_for_pending()
    if stop.reason:
        stop.finish(fabric, done)  # a preempted Slurm job is requeued here and leaves (preemption.Requeued)
    stop.restore()
    console.close()
    for logger in fabric.loggers:
        logger.finalize("success")
    if hasattr(parts.data, "sampled_proportions"):
        log.info("data mixture, proportions sampled: %s", parts.data.sampled_proportions())
    return {"losses": history, "sample": sample(ctx, model)}


def train_step(
    fabric, plan, reducer: StepReducer, objective: Objective, model, optimizer, batches: list[Batch], max_norm: float,
    health: Health | None = None, step: int = 0, poison: float | None = None,
):
    """One optimizer step over this rank's micro batches: (mean loss, grad norm, mean metrics,
    whether the weights were updated: `health` skips a step whose loss or norm is not finite).
    `poison` (fault injection) multiplies the loss before backward."""
    units = reducer.total(device_scalar(float(sum(objective.units(b) for b in batches)), fabric.device))
    # Data-parallel gradient reduction averages over dp ranks: scale so the result is the mean
    # per unit over the global batch.
    scale = plan.layout.dp_size / units.clamp(min=1.0)
    total = torch.zeros((), device=fabric.device)
    sums: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(batches):
        batch = batch.to(fabric.device, non_blocking=True)
        last = index == len(batches) - 1
        with fabric.no_backward_sync(model, enabled=not last):
            result = objective.step(model, batch)
            loss_sum = result.loss_sum if poison is None else result.loss_sum * poison
            fabric.backward(loss_sum * scale)
        total += loss_sum.detach().float()
        for name, value in result.metrics.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float()
    denominator = units.clamp(min=1.0)
    loss = reducer.total(total) / denominator  # global: every rank decides alike
    extras = {name: reducer.total(value) / denominator for name, value in sums.items()}
    judge = health.judge if health is not None else (lambda step, loss, norm: True)
    loss, grad_norm, metrics, updated = optimizer_step.update(
        fabric, model, optimizer, max_norm, loss, extras, lambda loss, norm: judge(step, loss, norm)
    )
    return loss, grad_norm, metrics, updated


def device_scalar(value: float, device: torch.device) -> torch.Tensor:
    """A 0-d tensor on `device` without a stall: torch.tensor(x, device=cuda) copies from pageable
    memory, which waits for every kernel already queued (the previous optimizer step)."""
    pinned = device.type == "cuda"
    return torch.tensor(value, pin_memory=pinned).to(device, non_blocking=pinned)


def roll_back(ctx, state: dict, health: Health, done: int) -> None:
    """Too many non-finite steps in a row: restore weights, optimizer and schedule from the newest
    good checkpoint, keeping the data position (the offending batches are not replayed) and the
    step count; stop (Health) when there is nothing to roll back to."""
    found = checkpoint.find_checkpoint("auto", ctx.run_dir)
    health.rolling_back(done, found)
    loader, counts = state["loader"], health.state_dict()
    position = loader.state_dict()
    checkpoint.load(ctx.parts.fabric, found, state)
    loader.load_state_dict(position)
    health.load_state_dict(counts)
    state["step"] = done


def checkpoint_due(trainer, done: int) -> bool:
    if trainer.checkpoint_every < 0:
        return False
    periodic = trainer.checkpoint_every > 0 and done % trainer.checkpoint_every == 0
    return periodic or done == trainer.max_steps


def speed(ctx, seconds: float) -> dict:
    fabric, plan = ctx.parts.fabric, ctx.plan
    out = throughput(
        plan.tokens_per_step, seconds, plan.world_size, plan.flops_per_token, fabric.device, ctx.config.trainer.peak_tflops
    )
    out["peak_memory_gib"] = peak_memory_gib(fabric.device)
    return out


def resume(ctx, state: dict) -> int:
    """Restore `state` from trainer.resume's checkpoint; returns the step to continue from."""
    spec = ctx.config.trainer.resume
    fabric = ctx.parts.fabric
    if spec == "auto":  # damaged newer checkpoints are named and set aside, so pruning never counts them as good
        if fabric.is_global_zero:
            checkpoint.set_aside_damaged(ctx.run_dir)
        fabric.barrier()
    found = checkpoint.find_checkpoint(spec, ctx.run_dir) if spec else None
    if found is None:
        if spec:
            log.info("resume=%s: no checkpoint in %s yet, starting from step 0", spec, ctx.run_dir)
        return 0
    remainder = checkpoint.load(fabric, found, state)
    step = int(remainder.get("step", state["step"]))
    if fabric.is_global_zero:
        keep_csv_history(fabric.loggers, step)
    log.info("resumed from %s at step %d", found, step)
    return step


def validation_rows(ctx, dp_rank: int) -> list[Batch]:
    trainer, plan = ctx.config.trainer, ctx.plan
    if not trainer.val_every:
        return []
    rows = ctx.parts.data.val_batches(micro_batch_size=plan.micro_batch_size, dp_rank=dp_rank, dp_size=plan.layout.dp_size)
    return rows[: trainer.val_batches]


@torch.no_grad()
def validate(fabric, reducer: StepReducer, objective: Objective, model, rows: list[Batch]) -> dict:
    """The objective on held-out rows, averaged per unit over every rank's rows."""
    total = torch.zeros((), device=fabric.device)
    units = torch.zeros((), device=fabric.device)
    sums: dict[str, torch.Tensor] = {}
    model.eval()
    for batch in rows:
        batch = batch.to(fabric.device)
        result = objective.step(model, batch)
        total += result.loss_sum.float()
        units += result.count
        for name, value in result.metrics.items():
            sums[name] = sums.get(name, 0.0) + value.float()
    model.train()
    denominator = reducer.total(units).clamp(min=1.0)
    loss = float(reducer.total(total) / denominator)
    out = {"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))}
    out |= {f"val/{name}": float(reducer.total(value) / denominator) for name, value in sums.items()}
    return out


def sample(ctx, model) -> str | None:
    """A short continuation of trainer.sample_prompt, printed at the end of training."""
    trainer = ctx.config.trainer
    if not trainer.sample_prompt or not trainer.sample_tokens:
        return None
    tokenizer = ctx.parts.tokenizer
    prompt = tokenizer.encode(trainer.sample_prompt, bos=True)
    new = generate(model, prompt, trainer.sample_tokens, stop_ids=(tokenizer.eos_id,), max_context=ctx.plan.seq_len)
    text = tokenizer.decode(new)
    if ctx.parts.fabric.is_global_zero:
        print(f"\nsample> {trainer.sample_prompt}{text}\n", flush=True)
    return text
