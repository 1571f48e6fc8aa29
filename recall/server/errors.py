"""Errors as OpenAI's API shapes them: ``{"error": {"message", "type", "param", "code"}}``.

recall's typed errors (``recall.core.errors``) map to 4xx by what they mean; anything else is a
500 that names the exception class but not its traceback."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recall.core import errors as rerr
from recall.server.batching import Closed


class APIError(Exception):
    """An error response: HTTP status, OpenAI error type, optional code and parameter name."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# most specific first: the first isinstance match wins
_RECALL_STATUS: list[tuple[type[Exception], int, str, str]] = [
    (rerr.EditNotFoundError, 404, "not_found_error", "edit_not_found"),
    (rerr.EditConflictError, 409, "conflict_error", "edit_conflict"),
    (rerr.StoreLockedError, 409, "conflict_error", "store_read_only"),
    (rerr.InvalidEditError, 400, "invalid_request_error", "invalid_edit"),
    (rerr.InvalidQueryError, 400, "invalid_request_error", "invalid_prompt"),
    (rerr.ImportFormatError, 400, "invalid_request_error", "invalid_import"),
    (rerr.RecallError, 500, "server_error", "recall_error"),
]


def from_recall_error(exc: rerr.RecallError) -> APIError:
    for cls, status, type_, code in _RECALL_STATUS:
        if isinstance(exc, cls):
            return APIError(status, str(exc), type_, code)
    raise AssertionError("RecallError is the last entry")  # pragma: no cover


def _respond(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.code, err.param), err.status, headers=err.headers)


def install_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to an OpenAI-shaped JSON body."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return _respond(exc)

    @app.exception_handler(rerr.RecallError)
    async def _recall(_: Request, exc: rerr.RecallError) -> JSONResponse:
        return _respond(from_recall_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
        return _respond(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _respond(APIError(exc.status_code, str(exc.detail), type_, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Closed)
    async def _closed(_: Request, exc: Closed) -> JSONResponse:
        # the worker or its model thread has stopped (shutdown): a queued request or a write
        return _respond(APIError(503, str(exc), "server_error", "shutting_down"))

    @app.exception_handler(RecursionError)
    async def _nested(_: Request, exc: RecursionError) -> JSONResponse:
        # the JSON parser recurses per nesting level: a body of 100,000 "[" ends here
        return _respond(APIError(400, "request body is nested too deeply", code="invalid_json"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _respond(APIError(500, f"internal error ({type(exc).__name__})", "server_error"))
