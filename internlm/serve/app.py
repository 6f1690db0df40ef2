"""The FastAPI application: `create_app(engine, config)`.

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions and
POST /v1/completions (streamed as server-sent events with `stream: true`). Every request is
checked whole (schema, model id, lengths) before it takes a slot or touches the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Sequence

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import StreamingResponse

from internlm.errors import ConfigError
from internlm.serve.admission import Admission
from internlm.serve.config import ServeConfig
from internlm.serve.engine_bridge import (
    Prompt, chat_prompt, check_request, completion_prompts, merged_deltas, model_id_of, sampling_params,
)
from internlm.serve.errors import APIError, error_body, install_handlers
from internlm.serve.middleware import ApiKeyGate, BodyLimit
from internlm.serve.responses import DONE, Choice, Shape, sse
from internlm.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields


class Lease:
    """One admitted request's engine handles and its admission slot, given back exactly once."""

    def __init__(self, admission: Admission, handles: list):
        self.admission, self.handles, self.closed = admission, handles, False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for handle in self.handles:
                handle.cancel()  # frees the engine slot of a choice still generating
            self.admission.release()


class StreamUntilDisconnect(StreamingResponse):
    """A streaming response that stops as soon as the client goes and then always gives its lease
    back, even when the stream never started (a body iterator that never ran has no cleanup)."""

    def __init__(self, content, lease: Lease, **kwargs):
        super().__init__(content, **kwargs)
        self.lease = lease

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we were sending
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()
            self.lease.close()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine, config: ServeConfig) -> FastAPI:
    app = FastAPI(title="internlm", summary="OpenAI-compatible server", docs_url="/docs", redoc_url=None)
    install_handlers(app)

    @app.exception_handler(ConfigError)
    async def _engine_refused(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse(error_body(400, exc.what, exc.where, "invalid_value"), status_code=400)

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyGate, api_key=config.api_key)  # added last = runs first
    admission = Admission(config.max_concurrent, config.max_queued)
    app.state.admission = admission
    model_id = app.state.model_id = model_id_of(engine, config)
    model_card = {"id": model_id, "object": "model", "created": 0, "owned_by": "internlm",
                  "max_model_len": engine.max_context}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # active/queued: requests admitted by the server; cache slots: sequences the engine is decoding.
        return {"status": "ok", "model": model_id, "active": admission.active, "queued": admission.queued,
                "cache_slots": engine.max_batch, "cache_slots_free": engine.cache.free_slots}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(404, f"the model '{name}' does not exist: this server serves '{model_id}'", "model", "model_not_found")
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _respond(Shape(chat=True, model=model_id), [chat_prompt(engine, body)], body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _respond(Shape(chat=False, model=model_id), completion_prompts(engine, body), body, request)

    async def _respond(shape: Shape, prompts: Sequence[Prompt], body: SamplingFields, request: Request):
        max_new = check_request(engine, config, body, prompts)
        await admission.acquire()
        lease = Lease(admission, [])
        try:
            # Choice i*n + c is the c-th sample of prompt i (OpenAI's order).
            for p in prompts:
                for c in range(body.n):
                    lease.handles.append(engine.submit(p.ids, sampling_params(body, p, max_new, c)))
        except BaseException:
            lease.close()
            raise
        prompt_tokens = sum(len(p.ids) for p in prompts)
        if body.stream:
            return StreamUntilDisconnect(_stream(shape, lease.handles, prompt_tokens, body.include_usage), lease,
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            return JSONResponse(shape.full(await _collect(lease.handles, request), prompt_tokens))
        finally:
            lease.close()

    async def _collect(handles, request: Request) -> list[Choice]:
        """Every choice whole; a client that hangs up first cancels the generation."""
        choices = [Choice() for _ in handles]

        async def gather() -> None:
            async for index, delta in merged_deltas(handles):
                choices[index].add(delta)

        work = asyncio.ensure_future(gather())
        watch = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()  # merged_deltas' cleanup cancels the handles
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            raise APIError(499, "the client closed the request", code="client_closed")  # nobody reads it
        work.result()  # re-raise an engine error
        return choices

    async def _stream(shape: Shape, handles, prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
        choices = [Choice() for _ in handles]
        try:
            if shape.chat:
                for index in range(len(handles)):
                    yield sse(shape.chunk(index, None, None, include_usage, role=True))
            async for index, delta in merged_deltas(handles):
                choices[index].add(delta)
                if delta.text:
                    yield sse(shape.chunk(index, delta.text, None, include_usage))
                if delta.finish_reason:
                    yield sse(shape.chunk(index, None, delta.finish_reason, include_usage))
            if include_usage:
                yield sse(shape.usage_chunk(prompt_tokens, sum(c.completion_tokens for c in choices)))
            yield DONE
        except Exception as error:  # headers are sent: report in the stream, then end it properly
            yield sse(error_body(500, f"generation failed: {error}", None, "server_error"))
            yield DONE

    return app
