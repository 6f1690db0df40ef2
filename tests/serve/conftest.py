"""A tiny trained run and a real `python -m internlm task=serve` process on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from internlm.api import run
from tests.conftest import FAST

API_KEY = "sk-test-internlm"
RUN_NAME = "tiny-chat"  # the run folder's name is the model id the server reports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def barely_trained_run(tmp_path_factory) -> Path:
    """The run both the server and the web demo tests use, trained once per session (the second
    fixture finds it complete in the session's base folder)."""
    folder = tmp_path_factory.getbasetemp() / "shared-runs" / RUN_NAME
    done = folder / ".trained"
    if not done.is_file():
        # Barely trained on purpose: a briefly trained tiny model answers only newlines, while near-initial
        # weights give varied text (Chinese included), so equal answers really mean equal computations.
        run(FAST + ["trainer.max_steps=2", "optimizer.lr=1e-7"], folder)
        done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return barely_trained_run(tmp_path_factory)


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=5).json()


def start_server(checkpoint: Path, folder: Path, *overrides: str, timeout: float = 90) -> Server:
    port = free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "internlm", "task=serve", f"checkpoint={checkpoint}", f"task.port={port}",
               f"hydra.run.dir={folder / 'run'}", "task.log_level=warning", *overrides]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the server did not answer within {timeout} s:\n{server.output()}")


def stop_server(server: Server, timeout: float = 30) -> int:
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM: drain and exit
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    running = start_server(tiny_run, tmp_path_factory.mktemp("server"), f"task.api_key={API_KEY}",
                           "task.max_tokens=3000", "task.max_concurrent=8", "task.max_queued=32")
    yield running
    stop_server(running)
