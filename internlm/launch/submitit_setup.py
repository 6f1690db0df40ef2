"""The submitit settings the Slurm launcher presets (conf/hydra/launcher/slurm*.yaml) rely on.

Applied in the submitting process by the sweep callback (`SweepSummary.on_multirun_start`):

* one preemption signal: SIGUSR2 (internlm.runtime.preemption.PREEMPT_SIGNAL). submitit's sbatch
  scripts ask for `--signal=USR2@<signal_delay_s>` unless SUBMITIT_PREEMPT_SIGNAL says otherwise,
  so that variable must be unset or USR2.
* job states without accounting: submitit polls `sacct`, which fails on clusters without slurmdbd;
  its watcher then reports UNKNOWN forever and a job that died without a result (killed, or
  exited before Hydra could record it) keeps the sweep waiting. The watcher installed here asks
  `scontrol show job` whenever `sacct` fails.
"""

from __future__ import annotations

import os
import subprocess
import time

from internlm.errors import ConfigError
from internlm.launch.slurm_state import scontrol_jobs

SIGNAL_NAME = "USR2"


def check_signal_convention(environ=os.environ) -> None:
    chosen = environ.get("SUBMITIT_PREEMPT_SIGNAL", SIGNAL_NAME)
    if chosen != SIGNAL_NAME:
        raise ConfigError(
            f"SUBMITIT_PREEMPT_SIGNAL={chosen}, but training saves and requeues on SIG{SIGNAL_NAME}",
            where="environment variable SUBMITIT_PREEMPT_SIGNAL",
            fix=f"unset it (or export SUBMITIT_PREEMPT_SIGNAL={SIGNAL_NAME})",
        )


def make_watcher(delay_s: int = 60):
    """A submitit SlurmInfoWatcher that falls back to scontrol when sacct fails."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class ScontrolFallbackWatcher(SlurmInfoWatcher):
        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            try:
                output = subprocess.check_output(command, stderr=subprocess.DEVNULL, timeout=60)
                info = self.read_info(output)
            except (subprocess.SubprocessError, OSError):
                info = scontrol_jobs([arg for arg in command[command.index("-j"):] if arg != "-j"])
            self._info_dict.update(info)
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return ScontrolFallbackWatcher(delay_s=delay_s)


def configure_submitit() -> None:
    """Apply both settings (idempotent)."""
    check_signal_convention()
    from submitit.slurm import slurm

    if type(slurm.SlurmJob.watcher).__name__ != "ScontrolFallbackWatcher":
        slurm.SlurmJob.watcher = make_watcher()
