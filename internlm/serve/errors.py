"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every failure.

Handlers turn validation errors (malformed JSON, wrong types, unknown fields), HTTP errors
(unknown routes, wrong methods) and our own `APIError` into that shape, so a client always gets
one readable message and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("internlm.serve")

# HTTP status -> OpenAI's error type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request the server refuses: HTTP status, message, the offending parameter and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None, str]:
    """(message, param, code) for pydantic's first error, worded for an API user."""
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    kind = error.get("type", "")
    if kind == "json_invalid":
        detail = error.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({detail})".replace(" ()", ""), None, "invalid_json"
    if kind == "extra_forbidden":
        return f"unknown or unsupported field '{param}': remove it", param, "unknown_field"
    if kind == "missing":
        return f"missing required field '{param}'", param, "missing_field"
    where = f"'{param}'" if param else "the request body"
    return f"invalid value for {where}: {error.get('msg', 'invalid')}", param, "invalid_value"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message, param, code = _validation_message(errors[0]) if errors else ("invalid request", None, "invalid_value")
        return error_response(400, message, param, code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", None, "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such route: see GET /v1/models, POST /v1/chat/completions, POST /v1/completions" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, None, "not_found" if exc.status_code == 404 else None)
