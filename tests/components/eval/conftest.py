"""Helpers of the evaluation tests: suites composed from conf/eval/ exactly as the CLI does."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

DATA = Path(__file__).parent / "data"


def compose_suite(name: str, *overrides: str, data_dir: Path | None = DATA):
    from internlm.api import compose

    extra = [f"task.eval.data_dir={data_dir}"] if data_dir is not None else []
    cfg = compose(["task=eval", f"eval@task.eval={name}", *extra, *overrides])
    return OmegaConf.to_object(cfg.task).eval


@pytest.fixture
def suite():
    return compose_suite
