"""InternLM's web demo: `task=web_demo checkpoint=<run|checkpoint|hf:dir> task.port=8501`.

Runs `streamlit run internlm/web_demo/app.py -- <checkpoint>` as a child process (the same app a
user can start by hand) and returns when it exits; Ctrl-C or SIGTERM stop it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from internlm.config import RootConfig
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.tasks.base import RunContext, Task, require_model_source

APP = Path(__file__).resolve().parent.parent / "web_demo" / "app.py"


@dataclass
class WebDemoConfig:
    host: str = "127.0.0.1"  # address Streamlit listens on (0.0.0.0 exposes the demo to the network)
    port: int = 8501  # TCP port
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    title: str | None = None  # page title; null = the model's name
    max_length: int = 2048  # the Max Length slider's starting value (prompt + reply tokens, 32..2048)


def streamlit_command(checkpoint: str, config: WebDemoConfig) -> list[str]:
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", config.host, "--server.port", str(config.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--", checkpoint, "--device", config.device, "--dtype", config.dtype, "--max-length", str(config.max_length),
    ]
    return command + (["--title", config.title] if config.title else [])


@register("task", "web_demo", WebDemoConfig)
class WebDemo(Task):
    """InternLM's Streamlit chat demo (Max Length, Top P, Temperature, Clear Chat History)."""

    needs_tokenizer = False  # the checkpoint brings its own

    def check_run_folder(self, config: RootConfig, raw: DictConfig, run_dir: Path) -> None:
        # Before plan.yaml is written, and before Streamlit starts: its errors would only show in a browser.
        require_model_source(config, "web_demo")
        if not 32 <= self.config.max_length <= 2048:
            raise ConfigError(f"task.max_length={self.config.max_length} is outside the slider's range",
                              where="task.max_length", fix="use 32..2048")
        if not 0 <= self.config.port <= 65535:
            raise ConfigError(f"task.port={self.config.port} is out of range", where="task.port", fix="use a TCP port 0..65535")

    def run(self, ctx: RunContext) -> int:
        print(f"web demo at http://{self.config.host}:{self.config.port}", flush=True)
        child = subprocess.Popen(streamlit_command(ctx.config.checkpoint, self.config))
        previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())  # pass a stop on to Streamlit
        try:
            return child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached both; let Streamlit finish its own shutdown
            return child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
