"""Errors in OpenAI's shape.

Every failure leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with a
meaningful status: 4xx for anything the client sent, 5xx only for faults of the server itself
(for example a constraint engine that let an invalid call through).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error that becomes an OpenAI error object with ``status``."""

    status: int = 400
    type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    status = 400


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class InvalidToolCall(APIError):
    """The model produced a call that fails its schema although the grammar should have prevented it.

    This is the server's fault (the constraint engine), never the client's, hence 500; the message
    names the engine so the fault can be traced.
    """

    status = 500
    type = "server_error"

    def __init__(self, engine: str, detail: str, what: str = "tool call") -> None:
        super().__init__(f"constraint engine '{engine}' produced an invalid {what}: {detail}",
                         code="invalid_tool_call")
        self.engine = engine


class ServerError(APIError):
    status = 500
    type = "server_error"


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body())


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to OpenAI's error shape; request validation becomes 400, not 422."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = []
        param = None
        for err in errors[:5]:
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            if param is None and loc:
                param = ".".join(loc)
            parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        return error_response(BadRequest("invalid request: " + "; ".join(parts), param=param))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Still a fault of the server (and logged by Starlette), but in the shape clients parse.
        return error_response(ServerError(f"internal server error ({type(exc).__name__})"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = NotFound if exc.status_code == 404 else APIError
        err = cls(str(exc.detail), status=exc.status_code,
                  code="request_too_large" if exc.status_code == 413 else None)
        if exc.status_code == 405:
            err.type = "invalid_request_error"
        return error_response(err)
