"""Run an app under uvicorn until SIGTERM or SIGINT, then drain: the listening socket closes,
running requests get `shutdown_timeout` seconds to finish, and the engine is closed."""

from __future__ import annotations

import contextlib
import logging
import signal

import uvicorn

from internlm.serve.app import create_app
from internlm.serve.config import ServeConfig

log = logging.getLogger("internlm")


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, except that after draining on a signal it returns (exit status 0, the
    engine closed by our `finally`) instead of re-raising the signal, which would kill the
    process with SIGTERM's default action before any cleanup."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(engine, config: ServeConfig) -> None:
    app = create_app(engine, config)
    server = _DrainingServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level,
        timeout_graceful_shutdown=config.shutdown_timeout, access_log=config.log_level == "debug",
    ))
    log.info("serving '%s' at http://%s:%d/v1", app.state.model_id, config.host, config.port)
    try:
        server.run()
    finally:
        engine.close()
    log.info("server stopped")
