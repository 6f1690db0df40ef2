"""Checks made before a body is parsed: the API key and the body size (plain ASGI middleware)."""

from __future__ import annotations

import hmac
import json

from internlm.serve.errors import error_body


async def _send_error(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyGate:
    """401 for a /v1 request without `Authorization: Bearer <key>` (constant-time comparison)."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "wrong API key" if given else "missing API key: send 'Authorization: Bearer <key>'"
                return await _send_error(send, 401, message, "invalid_api_key")
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over `max_bytes`, whether it declares its length or streams it in chunks."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        too_big = f"the request body is larger than {self.max_bytes} bytes (task.max_body_bytes)"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_error(send, 413, too_big, "body_too_large")
        chunks, size, more = [], 0, True
        while more:  # read it all (it is at most max_bytes), then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _send_error(send, 413, too_big, "body_too_large")
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for the disconnect, as the server would

        await self.app(scope, replay, send)
