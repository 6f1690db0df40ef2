"""What `task=serve` takes: where to listen, the API key and the limits that keep a server alive."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0 exposes the server to the network)
    port: int = 8000  # TCP port
    api_key: str | None = None  # when set, every /v1 request needs "Authorization: Bearer <key>"
    model_name: str | None = None  # id in /v1/models; null = the run's or export's folder name
    device: str = "auto"  # auto | cpu | cuda: where the engine runs the model
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    max_batch: int = 16  # KV-cache slots: sequences decoded together (more requests wait in the engine)
    max_context: int | None = None  # prompt + completion tokens per sequence; null = the model's trained range
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_prompt_tokens: int | None = None  # longer prompts get 400; null = the model's context
    max_tokens: int = 2048  # the largest max_tokens a request may ask; also the default cap
    max_n: int = 8  # the largest n (choices per prompt)
    max_concurrent: int = 32  # requests generating at once
    max_queued: int = 64  # requests waiting for a slot; beyond that, 429
    shutdown_timeout: float = 10.0  # seconds SIGTERM/SIGINT waits for running requests
    log_level: str = "info"  # uvicorn's log level: critical | error | warning | info | debug
