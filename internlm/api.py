"""For Python users and notebooks: run a task, or load a trained model and its tokenizer.

    model, tokenizer = internlm.load("outputs/2026-11-28/10-00-00")
    logits = model(torch.tensor([tokenizer.encode("Hello", bos=True)]))
    internlm.api.run(["model.num_layers=2", "trainer.max_steps=10"], run_dir="outputs/try")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from internlm.preflight import check_overrides, compose as hydra_compose
from internlm.program import run_program
from internlm.inference.chat_api import load  # noqa: F401  (public: internlm.load, with model.chat)


def compose(overrides: list[str] | tuple[str, ...] = ()):
    """The composed (not yet compiled) config for these overrides, checked like the CLI's."""
    return hydra_compose(check_overrides(list(overrides)))  # a single path given to a list field becomes a list


def run(overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path = "outputs/api") -> Any:
    """Run a task as `python -m internlm <overrides>` would, with `run_dir` as the run folder."""
    return run_program(compose(overrides), Path(run_dir))
