"""A barely trained tiny run for the web demo (near-initial weights give varied replies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from internlm.api import run
from tests.conftest import FAST


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("web_demo") / "tiny-demo"
    run(FAST + ["trainer.max_steps=2", "optimizer.lr=1e-7"], folder)
    return folder
