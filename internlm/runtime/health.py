"""Step health: a non-finite loss or gradient norm never reaches the weights.

A step whose (global) loss or gradient norm is NaN/Inf is skipped: no optimizer update, no
scheduler step, gradients zeroed, the data position still advancing past its batches (InternLM's
behaviour). Skips are counted (`health/skipped_steps`) and logged with the step. After
`trainer.max_consecutive_skips` in a row the loop rolls back to the last good checkpoint, keeping
its data position (so the offending batches are not replayed); if there is none, or the skips come
back before one good step, it stops with one message. A loss above `trainer.spike_factor` times
its running mean is reported (`health/spikes`), not acted on.

Every rank sees the same global loss and norm, so every rank takes the same decision.
"""

from __future__ import annotations

import logging
import math

from internlm.errors import ConfigError

log = logging.getLogger("internlm")

SPIKE_WARMUP = 10  # good steps before the running mean is trusted
SPIKE_DECAY = 0.9  # running mean: mean <- decay * mean + (1 - decay) * loss


class Health:
    def __init__(self, max_consecutive_skips: int, spike_factor: float):
        if max_consecutive_skips < 1:
            raise ConfigError(
                f"trainer.max_consecutive_skips={max_consecutive_skips} must be at least 1",
                where="trainer.max_consecutive_skips",
                fix="set a positive count, e.g. trainer.max_consecutive_skips=5",
            )
        self.max_consecutive_skips, self.spike_factor = max_consecutive_skips, spike_factor
        self.skipped = 0  # steps skipped in all
        self.consecutive = 0  # skipped in a row, up to the current step
        self.spikes = 0
        self.rollbacks = 0
        self.good_since_rollback = True
        self.mean: float | None = None
        self.good_steps = 0

    def judge(self, step: int, loss: float, grad_norm: float) -> bool:
        """True when step `step` (1-based) may update the weights."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.skipped += 1
            self.consecutive += 1
            log.warning(
                "step %d: loss %s, grad norm %s: not finite, optimizer step skipped (%d in a row, %d in all)",
                step, loss, grad_norm, self.consecutive, self.skipped,
            )
            return False
        self.consecutive = 0
        self.good_since_rollback = True
        self._watch_spike(step, loss)
        return True

    def _watch_spike(self, step: int, loss: float) -> None:
        if self.spike_factor > 0 and self.good_steps >= SPIKE_WARMUP and loss > self.spike_factor * self.mean:
            self.spikes += 1
            log.warning("step %d: loss spike, %.4g is above %g x its running mean %.4g", step, loss, self.spike_factor, self.mean)
        self.mean = loss if self.mean is None else SPIKE_DECAY * self.mean + (1 - SPIKE_DECAY) * loss
        self.good_steps += 1

    def exhausted(self) -> bool:
        return self.consecutive >= self.max_consecutive_skips

    def rolling_back(self, step: int, checkpoint) -> None:
        """Record a rollback, or stop when there is nothing good to roll back to."""
        if checkpoint is None or not self.good_since_rollback:
            reason = "no checkpoint to roll back to" if checkpoint is None else "they came back right after a rollback"
            raise ConfigError(
                f"{self.consecutive} steps in a row up to step {step} had a non-finite loss or gradient norm, and {reason}",
                where="trainer.max_consecutive_skips",
                fix="lower optimizer.lr or raise trainer.grad_clip, check the data at these steps, then continue with trainer.resume=auto",
            )
        log.warning("%d non-finite steps in a row up to step %d: rolling back to %s, keeping the data position", self.consecutive, step, checkpoint)
        self.rollbacks += 1
        self.consecutive = 0
        self.good_since_rollback = False

    def metrics(self) -> dict[str, float]:
        return {"health/skipped_steps": float(self.skipped), "health/spikes": float(self.spikes)}

    # Saved with checkpoints (a resumed run keeps counting, and its spike mean equals the uninterrupted run's).
    def state_dict(self) -> dict:
        keys = ("skipped", "consecutive", "spikes", "rollbacks", "good_since_rollback", "mean", "good_steps")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, saved: dict) -> None:
        for key, value in saved.items():
            setattr(self, key, value)
