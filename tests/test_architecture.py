"""The house's rules, checked: the floors of pyproject.toml's import-linter contracts hold, and
every task declares what it needs through the Task base class."""

from __future__ import annotations

from pathlib import Path

import internlm.tasks  # noqa: F401  (registers every task)
from internlm import registry
from internlm.tasks.base import Task

ROOT = Path(__file__).parents[1]


def test_import_linter_contracts_hold(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_every_task_derives_from_the_task_protocol():
    tasks = registry.groups()["task"]
    assert {"pretrain", "plan", "prepare_data", "export_hf", "generate"} <= {t.name for t in tasks}
    for task in tasks:
        assert issubclass(task.cls, Task), f"task {task.name} does not derive from internlm.tasks.base.Task"


def test_model_bases_are_not_offered_as_models():
    models = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    assert "tiny" in models and not any(name.startswith("base") for name in models)
