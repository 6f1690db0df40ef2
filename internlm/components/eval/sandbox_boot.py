"""The sandbox's launcher: a fresh interpreter (`python -I -S sandbox_boot.py FD CONFIG`) that
applies the isolation to itself and then execs the program's interpreter.

Why a separate process: the parent evaluates programs from a thread pool, and Python code run
between fork and exec (subprocess's `preexec_fn`) in a threaded process can deadlock or crash
on a lock another thread held at the fork. Here nothing of the parent runs after the fork: this
file starts single-threaded and imports only the standard library.

It reports on file descriptor FD, before the exec, one line: `ok <layers>` or `refused <why>`.
The program never sees that descriptor (it is closed before the exec), so it cannot forge a
report that would lower the isolation of later programs.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER = 0x40000000, 0x00020000, 0x10000000
NOBODY = 65534
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64
_AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = -100, 0x8000, 1


class Refused(Exception):
    pass


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result, what):
    if result != 0:
        raise Refused(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount_setattr(libc, path, flags, attr):  # no libc wrapper: the raw syscall
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), path, ctypes.c_uint(flags),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def _kernel_layers(libc, workdir, python_home):
    """New network and mount namespaces; every mount read-only except the work directory, the
    interpreter bound (read-only) inside it so that `nobody` can run it."""
    _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare(network, mount)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    # The work directory first: a bind over it later would hide the interpreter mounted inside.
    _check(libc.mount(workdir.encode(), workdir.encode(), None, _MS_BIND, None), "binding the work directory")
    target = os.path.join(workdir, ".python").encode()
    _check(libc.mount(python_home.encode(), target, None, _MS_BIND | _MS_REC, None), "binding the interpreter")
    _check(_mount_setattr(libc, b"/", _AT_RECURSIVE, _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)), "read-only /")
    _check(_mount_setattr(libc, workdir.encode(), 0, _MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0)), "writable work directory")
    os.chdir(workdir)  # the working directory still pointed into the mount below the new bind


def _network_only(libc):
    """Without root: a network namespace, through a user namespace where the kernel allows one."""
    if libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return ["network namespace"]
    return []


def _limits(limits):
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb, limits["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mb, limits["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main():
    status_fd, config = int(sys.argv[1]), json.loads(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if config["kernel"]:
            _kernel_layers(libc, config["workdir"], config["python_home"])
            layers = ["network namespace", "read-only mounts", "user nobody"]
        else:
            layers = _network_only(libc)
        _limits(config["limits"])
        if config["kernel"]:  # root's processes ignore RLIMIT_NPROC and may write anything: become nobody
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
    except (Refused, OSError) as exc:
        os.write(status_fd, f"refused {exc}\n".encode())
        os._exit(0)
    os.write(status_fd, ("ok " + ",".join(layers + ["rlimits"]) + "\n").encode())
    os.close(status_fd)
    argv = config["argv"]
    os.execve(argv[0], argv, config["env"])


if __name__ == "__main__":
    main()
