"""Serve a model over OpenAI's HTTP API: `task=serve checkpoint=<run|checkpoint|hf:dir> task.port=8000`.

FastAPI, uvicorn and the engine are imported in `run`: this module is imported at CLI start-up
(to register the task) and must stay cheap.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from internlm.config import RootConfig
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.serve.config import ServeConfig
from internlm.tasks.base import RunContext, Task, require_model_source


def check_serve_config(config: ServeConfig) -> None:
    """Refuse impossible settings before the model is loaded."""
    checks = [
        (0 <= config.port <= 65535, "port", "a TCP port 0..65535"),
        (config.max_body_bytes >= 1024, "max_body_bytes", "at least 1024"),
        (config.max_prompt_tokens is None or config.max_prompt_tokens >= 1, "max_prompt_tokens", "null or >= 1"),
        (config.max_tokens >= 1, "max_tokens", ">= 1"),
        (config.max_n >= 1, "max_n", ">= 1"),
        (config.max_batch >= 1, "max_batch", ">= 1"),
        (config.max_context is None or config.max_context >= 2, "max_context", "null or >= 2"),
        (config.max_concurrent >= 1, "max_concurrent", ">= 1"),
        (config.max_queued >= 0, "max_queued", ">= 0"),
        (config.shutdown_timeout >= 0, "shutdown_timeout", ">= 0 seconds"),
        (config.api_key is None or config.api_key.strip() != "", "api_key", "null (no key) or a non-empty string"),
    ]
    for ok, field, rule in checks:
        if not ok:
            raise ConfigError(f"task.{field}={getattr(config, field)!r} is out of range", where=f"task.{field}", fix=f"use {rule}")


@register("task", "serve", ServeConfig)
class Serve(Task):
    """An OpenAI-compatible server (chat, completions, streaming) over the inference engine."""

    needs_tokenizer = False  # the checkpoint brings its own

    def check_run_folder(self, config: RootConfig, raw: DictConfig, run_dir: Path) -> None:
        # Runs before plan.yaml is written: a bad command line leaves nothing behind.
        require_model_source(config, "serve")
        check_serve_config(self.config)

    def run(self, ctx: RunContext) -> None:
        from internlm.inference import load_engine
        from internlm.serve.server import serve

        cfg = self.config
        engine = load_engine(ctx.config.checkpoint, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch,
                             max_context=cfg.max_context)
        serve(engine, cfg)
