"""Next-token pretraining: the one training loop, readable top to bottom.

Each optimizer step draws `grad_accumulation` micro batches per data-parallel rank, normalises the
loss by the number of labelled tokens in the whole global batch (so 1 or N devices, with any
accumulation, optimise exactly the same objective), clips, steps, and logs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torchmetrics.aggregation import MeanMetric

from internlm.components.data.batch import Batch
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.runtime import checkpoint
from internlm.runtime.console import Console
from internlm.runtime.generation import generate
from internlm.runtime.metrics import StepTimer, keep_csv_history, peak_memory_gib, throughput
from internlm.tasks.base import RunContext

log = logging.getLogger("internlm")


@dataclass
class PretrainConfig:
    pass


@register("task", "pretrain", PretrainConfig)
class Pretrain:
    """Train the model on the data from scratch, or resume a run."""

    def __init__(self, config: PretrainConfig):
        self.config = config

    def run(self, ctx: RunContext) -> dict:
        trainer, plan, bench = ctx.config.trainer, ctx.plan, ctx.bench
        fabric = bench.fabric
        dp_rank = fabric.global_rank // plan.layout.tensor  # tensor-parallel peers read the same rows
        # Data first: a missing or corrupt file is reported before the model takes any memory.
        loader = bench.data.train_loader(
            micro_batch_size=plan.micro_batch_size, dp_rank=dp_rank, dp_size=plan.layout.dp_size, seed=trainer.seed
        )
        val_rows = self.validation_rows(ctx, dp_rank)
        model, optimizer, scheduler = bench.model, bench.optimizer, bench.scheduler
        state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader, "step": 0}
        start_step = self.resume(ctx, state)

        if fabric.is_global_zero:
            log.info(
                "training %s parameters on %d %s device(s), %s tokens/step, run folder %s",
                f"{plan.parameters:,}", plan.world_size, plan.accelerator, f"{plan.tokens_per_step:,}", ctx.run_dir,
            )
        console = Console(fabric, trainer, start_step)
        timer = StepTimer(fabric.device)
        history: list[float] = []
        for step in range(start_step, trainer.max_steps):
            loss, grad_norm = self.train_step(ctx, model, optimizer, loader)
            scheduler.step()
            seconds = timer.lap()
            history.append(loss)
            done = step + 1
            metrics = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm}
            metrics |= {f"perf/{k}": v for k, v in self.speed(ctx, seconds).items()}
            metrics |= loader.metrics()  # data/epoch, data/mix/<source> for mixtures
            if val_rows and trainer.val_every and (done % trainer.val_every == 0 or done == trainer.max_steps):
                metrics |= self.validate(ctx, model, val_rows)
                timer.lap()  # validation time is not training time
            if done % trainer.log_every == 0 or done == trainer.max_steps or "val/loss" in metrics:
                fabric.log_dict(metrics, step=done)
            console.update(done, metrics)
            if self.checkpoint_due(trainer, done):
                state["step"] = done
                checkpoint.save(
                    fabric, ctx.run_dir, done, state, ctx.raw, ctx.components, trainer.keep_checkpoints,
                    async_save=trainer.async_checkpoint,
                )
                timer.lap()
        checkpoint.wait_for_pending()
        console.close()
        for logger in fabric.loggers:
            logger.finalize("success")
        if hasattr(bench.data, "sampled_proportions"):
            log.info("data mixture, proportions sampled: %s", bench.data.sampled_proportions())
        sample = self.sample(ctx, model)
        return {"losses": history, "sample": sample}

    @staticmethod
    def checkpoint_due(trainer, done: int) -> bool:
        if trainer.checkpoint_every < 0:
            return False
        periodic = trainer.checkpoint_every > 0 and done % trainer.checkpoint_every == 0
        return periodic or done == trainer.max_steps

    def train_step(self, ctx: RunContext, model, optimizer, loader) -> tuple[float, float]:
        fabric, plan = ctx.bench.fabric, ctx.plan
        batches: list[Batch] = [next(loader) for _ in range(plan.grad_accumulation)]
        labelled = torch.tensor(float(sum(b.num_loss_tokens for b in batches)), device=fabric.device)
        if plan.world_size > 1:  # tensor-parallel peers hold the same rows: count them once
            labelled = fabric.all_reduce(labelled, reduce_op="sum") / plan.layout.tensor
        # Data-parallel gradient reduction averages over dp ranks: scale so the result is the
        # per-token mean over the global batch.
        scale = plan.layout.dp_size / labelled.clamp(min=1.0)
        total = torch.zeros((), device=fabric.device)
        for index, batch in enumerate(batches):
            batch = batch.to(fabric.device)
            last = index == len(batches) - 1
            with fabric.no_backward_sync(model, enabled=not last):
                loss_sum = model(batch.input_ids, labels=batch.labels, **batch.model_inputs())
                fabric.backward(loss_sum * scale)
            total += loss_sum.detach().float()
        grad_norm = self.clip(ctx, model, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if plan.world_size > 1:
            total = fabric.all_reduce(total, reduce_op="sum") / plan.layout.tensor
        return float(total / labelled.clamp(min=1.0)), grad_norm

    def clip(self, ctx: RunContext, model, optimizer) -> float:
        max_norm = ctx.config.trainer.grad_clip
        if max_norm > 0:
            norm = ctx.bench.fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
        else:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def speed(self, ctx: RunContext, seconds: float) -> dict:
        fabric, plan = ctx.bench.fabric, ctx.plan
        out = throughput(
            plan.tokens_per_step, seconds, plan.world_size, plan.flops_per_token, fabric.device, ctx.config.trainer.peak_tflops
        )
        out["peak_memory_gib"] = peak_memory_gib(fabric.device)
        return out

    def check_run_folder(self, config, raw, run_dir) -> None:
        """Before the plan is written or anything is built: never train over an earlier run's
        checkpoints, and never resume from a checkpoint of another model."""
        spec = config.trainer.resume
        if not spec:
            if checkpoint.complete_checkpoints(run_dir):
                raise ConfigError(
                    f"the run folder {run_dir} already holds checkpoints of an earlier run",
                    where="hydra.run.dir",
                    fix="continue it with trainer.resume=auto, or start a new run in another hydra.run.dir",
                )
            return
        found = checkpoint.find_checkpoint(spec, run_dir)
        if found is not None:
            from omegaconf import OmegaConf

            checkpoint.check_same_model(found, OmegaConf.to_container(raw.model, resolve=True))

    def resume(self, ctx: RunContext, state: dict) -> int:
        spec = ctx.config.trainer.resume
        found = checkpoint.find_checkpoint(spec, ctx.run_dir) if spec else None
        if found is None:
            if spec:
                log.info("resume=%s: no checkpoint in %s yet, starting from step 0", spec, ctx.run_dir)
            return 0
        remainder = checkpoint.load(ctx.bench.fabric, found, state)
        step = int(remainder.get("step", state["step"]))
        from lightning.fabric.loggers import CSVLogger

        for logger in ctx.bench.fabric.loggers:
            if isinstance(logger, CSVLogger) and ctx.bench.fabric.is_global_zero:
                keep_csv_history(logger, step)
        log.info("resumed from %s at step %d", found, step)
        return step

    def validation_rows(self, ctx: RunContext, dp_rank: int) -> list[Batch]:
        trainer, plan = ctx.config.trainer, ctx.plan
        if not trainer.val_every:
            return []
        rows = ctx.bench.data.val_batches(
            micro_batch_size=plan.micro_batch_size, dp_rank=dp_rank, dp_size=plan.layout.dp_size
        )
        return rows[: trainer.val_batches]

    @torch.no_grad()
    def validate(self, ctx: RunContext, model, rows: list[Batch]) -> dict:
        fabric = ctx.bench.fabric
        mean = MeanMetric().to(fabric.device)  # token-weighted, synchronised across ranks
        model.eval()
        for batch in rows:
            batch = batch.to(fabric.device)
            loss_sum = model(batch.input_ids, labels=batch.labels, **batch.model_inputs())
            count = batch.num_loss_tokens
            if count:
                mean.update(loss_sum.float() / count, weight=count)
        model.train()
        loss = float(mean.compute())
        return {"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))}

    def sample(self, ctx: RunContext, model) -> str | None:
        trainer = ctx.config.trainer
        if not trainer.sample_prompt or not trainer.sample_tokens:
            return None
        tokenizer = ctx.bench.tokenizer
        prompt = tokenizer.encode(trainer.sample_prompt, bos=True)
        new = generate(
            model, prompt, trainer.sample_tokens, stop_ids=(tokenizer.eos_id,), max_context=ctx.plan.seq_len
        )
        text = tokenizer.decode(new)
        if ctx.bench.fabric.is_global_zero:
            print(f"\nsample> {trainer.sample_prompt}{text}\n", flush=True)
        return text
