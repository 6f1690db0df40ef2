"""Fault injection for tests and campaigns: the `debug` config section, off by default.

Each fault goes through the real code path it tests: an injected NaN is multiplied into the loss
before backward (so the gradients are NaN too), an injected I/O error is raised from inside the
checkpoint write, after some of its files exist.

    python -m internlm debug.inject_nan_steps=[3,7] debug.fail_checkpoint_at_step=100 debug.slow_checkpoint_s=2
"""

from __future__ import annotations

import errno
import time
from typing import Any


def _debug(config: Any) -> Any:
    """The `debug` node of a typed or raw config (None when absent: an older checkpoint's config)."""
    return getattr(config, "debug", None) if config is not None else None


def nan_factor(config: Any, step: int) -> float | None:
    """NaN when `step` (1-based) is listed in debug.inject_nan_steps, else None."""
    debug = _debug(config)
    if debug is not None and step in list(debug.inject_nan_steps or ()):
        return float("nan")
    return None


def during_checkpoint_write(config: Any, step: int, rank: int = 0) -> OSError | None:
    """Called inside a checkpoint write, after its first file: sleeps as configured and returns the
    injected I/O error for this step (on every rank, or on debug.fail_checkpoint_rank only), if any.
    The caller raises it where that write's real failure would surface."""
    debug = _debug(config)
    if debug is None:
        return None
    if debug.slow_checkpoint_s:
        time.sleep(float(debug.slow_checkpoint_s))
    only = getattr(debug, "fail_checkpoint_rank", None)
    if debug.fail_checkpoint_at_step is not None and int(debug.fail_checkpoint_at_step) == step and only in (None, rank):
        return OSError(errno.EIO, f"injected I/O error on rank {rank} while writing checkpoint {step} (debug.fail_checkpoint_at_step)")
    return None


class FailWhenCollected:
    """An asynchronous write whose injected error surfaces where a real background failure does:
    when the write's result is collected (after its files were written)."""

    def __init__(self, future: Any, error: OSError):
        self.future, self.error = future, error

    def result(self) -> None:
        self.future.result()
        raise self.error
