"""One save-and-exit path for a training run: a Slurm signal, SIGTERM or a stop file.

The signal convention, end to end, is SIGUSR2 (`PREEMPT_SIGNAL`):
* submitit's sbatch scripts already ask for `--signal=USR2@<signal_delay_s>` (its default) and its
  job wrapper already handles USR2; `launchers/slurm/pretrain.sbatch` asks for the same.
* Lightning's SLURMEnvironment expects SIGUSR1 by default (Trainer's signal connector), but Fabric
  installs no handler: this module is the only one that acts on the signal in a training process.
* USR1 is avoided on purpose: NCCL may use it (submitit's warning).

`StopRequest.install()` replaces the handlers of USR2 and SIGTERM with ones that only set a flag.
The loop asks `should_stop(fabric)` at every step boundary: the flag, or the existence of
`trainer.stop_file` (InternLM's `stop_file_path`), all-reduced so every rank stops after the same
step. The loop then writes a checkpoint and calls `finish(fabric)`: after USR2 under Slurm, rank 0
requeues the job (`scontrol requeue $SLURM_JOB_ID`) and every rank leaves with `Requeued` (a
SystemExit: submitit records no result, so the sweep keeps waiting for the requeued job); after
SIGTERM or the stop file the run simply ends, with its checkpoint (a stop file is removed, so the resumed run goes on).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import torch

log = logging.getLogger("internlm")

PREEMPT_SIGNAL = signal.SIGUSR2  # Slurm's "time is nearly up / you are preempted" signal

# Why a run stopped early, as `StopRequest.reason`.
PREEMPTED = "preempted"  # PREEMPT_SIGNAL: checkpoint, requeue under Slurm
TERMINATED = "terminated"  # SIGTERM: checkpoint, end
STOP_FILE = "stop_file"  # trainer.stop_file appeared: checkpoint, end


class Requeued(SystemExit):
    """Leaves the process after the job was requeued: not a result, not an error to report."""


class StopRequest:
    """Collects stop requests (signals, a stop file) and answers them at step boundaries."""

    def __init__(self, stop_file: str | Path | None = None, environ: dict | None = None, requeue: bool = True):
        self.stop_file = Path(stop_file) if stop_file else None
        self.environ = os.environ if environ is None else environ
        self.requeue = requeue  # only when the requeued job can resume (trainer.resume is set)
        self.signal_reason: str | None = None
        self.reason: str | None = None  # set once every rank agreed to stop
        self._previous: dict[int, object] = {}

    # -- signals -----------------------------------------------------------------------------
    def install(self) -> "StopRequest":
        """Take over USR2 and SIGTERM (only the main thread may install handlers)."""
        for signum, reason in ((PREEMPT_SIGNAL, PREEMPTED), (signal.SIGTERM, TERMINATED)):
            try:
                self._previous[signum] = signal.signal(signum, self._handler(reason))
            except ValueError:  # not the main thread: the stop file still works
                return self
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handler(self, reason: str):
        def handle(signum, frame):
            # Keep the first reason: a preempted job also gets SIGTERM when Slurm requeues it.
            if self.signal_reason is None:
                self.signal_reason = reason
                log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

        return handle

    # -- the step boundary ---------------------------------------------------------------------
    def local_reason(self) -> str | None:
        if self.signal_reason:
            return self.signal_reason
        if self.stop_file is not None and self.stop_file.exists():
            return STOP_FILE
        return None

    def should_stop(self, fabric) -> bool:
        """True on every rank once any rank saw a signal or the stop file (one all-reduce per step)."""
        codes = {None: 0, STOP_FILE: 1, TERMINATED: 2, PREEMPTED: 3}
        agreed = codes[self.local_reason()]
        if fabric.world_size > 1:  # alone, no device round trip (it would wait for the queued update)
            code = torch.tensor(float(agreed), device=fabric.device)
            agreed = int(fabric.all_reduce(code, reduce_op="max").item())
        if agreed:
            self.reason = {value: key for key, value in codes.items()}[agreed]
        return bool(agreed)

    # -- after the checkpoint ------------------------------------------------------------------
    def finish(self, fabric, step: int) -> None:
        """Called once the stop checkpoint is written: requeue a preempted Slurm job and leave."""
        self.restore()
        job = self.environ.get("SLURM_JOB_ID")
        if self.reason == STOP_FILE and fabric.is_global_zero:
            self.stop_file.unlink(missing_ok=True)  # consumed: the resumed run must not stop at once
        if self.reason != PREEMPTED or not job:
            log.info("stopped after step %d (%s); the checkpoint resumes with trainer.resume=auto", step, self.reason)
            return
        if not self.requeue:
            log.warning(
                "preempted after step %d: not requeuing job %s because trainer.resume is not set "
                "(a requeued job could not continue); resubmit it with trainer.resume=auto", step, job,
            )
            return
        fabric.barrier()  # every rank's shard of the checkpoint is on disk before the job is requeued
        if fabric.is_global_zero:
            log.warning("preempted after step %d: requeuing Slurm job %s", step, job)
            requeue_job(job)
        raise Requeued(0)


def requeue_job(job_id: str) -> None:
    """Put the job back in the queue; Slurm ends this allocation's processes right away."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
