"""What a person watching the run sees: a progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("internlm")


def format_metrics(metrics: dict) -> str:
    parts = [f"loss {metrics['train/loss']:.4f}", f"lr {metrics['train/lr']:.2e}", f"gnorm {metrics['train/grad_norm']:.2f}"]
    if "val/loss" in metrics:
        parts.append(f"val {metrics['val/loss']:.4f} (ppl {metrics['val/perplexity']:.1f})")
    parts.append(f"{metrics['perf/tokens_per_device_per_s']:,.0f} tok/dev/s")
    if "perf/mfu" in metrics:
        parts.append(f"MFU {100 * metrics['perf/mfu']:.1f}%")
    parts.append(f"mem {metrics['perf/peak_memory_gib']:.1f} GiB")
    return " | ".join(parts)


class Console:
    def __init__(self, fabric, trainer_config, start_step: int):
        self.enabled = fabric.is_global_zero
        self.every = trainer_config.log_every
        self.max_steps = trainer_config.max_steps
        show_bar = trainer_config.progress_bar
        if show_bar is None:
            show_bar = sys.stderr.isatty()
        self.bar = None
        if self.enabled and show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(format_metrics(metrics), refresh=False)
        if step % self.every == 0 or step == self.max_steps or "val/loss" in metrics:
            line = f"step {step}/{self.max_steps} | {format_metrics(metrics)}"
            (self.bar.write if self.bar is not None else log.info)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
