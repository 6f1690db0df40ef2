"""Lightning's watchdog over the processes it starts, given a grace period before it kills.

When Fabric starts ranks 1..n-1 as children of rank 0, a thread in rank 0 polls them every 5 s and,
once one has died, SIGKILLs every rank, rank 0 included. That kill races rank 0's own reaction to
the lost peer (its next collective fails at once, and it stops with one message saying how to
resume). When the poll came first, the user got exit code -9 and no message (CI, 2026-12-03). Here
the watchdog waits `grace_s` after it sees a dead child before it kills. A healthy rank 0 stops by
itself well within that: a failed collective is reported at once, a silent one after
trainer.collective_timeout_s. Only a rank 0 stuck outside collectives is still killed, as before.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("internlm")


def observer_with_grace(grace_s: float):
    """A subclass of Lightning's child-process observer that waits `grace_s` before its kill."""
    from lightning.fabric.strategies.launchers import subprocess_script

    class ObserverWithGrace(subprocess_script._ChildProcessObserver):
        def _terminate_all(self) -> None:
            # A daemon thread: if this process ends by itself during the sleep, the thread ends with it.
            time.sleep(grace_s)
            log.warning("a child rank stopped %.0f s ago and this process is still running: killing every rank", grace_s)
            super()._terminate_all()

    return ObserverWithGrace


def give_watchdog_grace(grace_s: float) -> bool:
    """Make Fabric's launcher start the watchdog with a grace period. Returns False, leaving
    Lightning's own watchdog in place, when this Lightning has no such hook (a newer layout)."""
    from lightning.fabric.strategies.launchers import subprocess_script

    if not (hasattr(subprocess_script, "_launch_process_observer") and hasattr(subprocess_script, "_ChildProcessObserver")):
        log.warning("this lightning has no child-process observer hook: a killed rank may stop rank 0 without its message")
        return False
    observer = observer_with_grace(grace_s)

    def launch_observer(child_processes):
        observer(child_processes=child_processes, main_pid=os.getpid()).start()

    subprocess_script._launch_process_observer = launch_observer
    return True
