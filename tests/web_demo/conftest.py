"""The barely trained tiny run of the server tests (near-initial weights give varied replies),
trained once per session for both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.conftest import barely_trained_run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    return barely_trained_run(tmp_path_factory)
