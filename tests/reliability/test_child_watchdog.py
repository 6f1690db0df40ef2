"""Lightning's watchdog, given a grace period: a dead child rank no longer gets rank 0 killed before
rank 0 has said what happened (the race CI lost on 2026-12-03: exit -9, no message). Stand-in
processes play rank 0 and the child, so the kill is observed from outside."""

from __future__ import annotations

import subprocess
import sys
import time

from lightning.fabric.strategies.launchers import subprocess_script

from internlm.runtime.child_watchdog import give_watchdog_grace, observer_with_grace

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def exited(code: int) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    child.wait()
    return child


def test_a_dead_child_gets_rank_zero_killed_only_after_the_grace_period():
    rank_zero = subprocess.Popen(SLEEPER)
    try:
        watchdog = observer_with_grace(2.0)(main_pid=rank_zero.pid, child_processes=[exited(3)], sleep_period=0.05)
        watchdog.start()
        time.sleep(1.0)  # Lightning's own watchdog would have killed it after one poll (0.05 s here)
        assert rank_zero.poll() is None
        assert rank_zero.wait(timeout=30) == -9  # the grace over, the kill still comes
    finally:
        rank_zero.kill()
        rank_zero.wait()


def test_children_that_finish_well_get_nobody_killed():
    rank_zero = subprocess.Popen(SLEEPER)
    try:
        watchdog = observer_with_grace(0.1)(main_pid=rank_zero.pid, child_processes=[exited(0)], sleep_period=0.05)
        watchdog.start()
        watchdog.join(timeout=10)
        assert not watchdog.is_alive()  # it finished: every child ended with 0
        assert rank_zero.poll() is None
    finally:
        rank_zero.kill()
        rank_zero.wait()


def test_fabrics_launcher_starts_the_watchdog_with_grace(monkeypatch):
    # set to itself: monkeypatch then puts Lightning's own launcher back after the test
    monkeypatch.setattr(subprocess_script, "_launch_process_observer", subprocess_script._launch_process_observer)
    started = []
    monkeypatch.setattr(subprocess_script._ChildProcessObserver, "start", lambda self: started.append(self))
    assert give_watchdog_grace(5.0)
    subprocess_script._launch_process_observer([])
    (watchdog,) = started
    assert isinstance(watchdog, subprocess_script._ChildProcessObserver)
    assert type(watchdog)._terminate_all is not subprocess_script._ChildProcessObserver._terminate_all
