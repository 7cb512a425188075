"""The FastAPI application: thin routers over the serving classes kept on ``app.state``."""

from __future__ import annotations

import gc
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from serve.core import ServingCore
from serve.errors import AuthenticationError, error_response, install_error_handlers
from serve.limits import BodySizeLimit
from serve.protocol import ChatCompletionRequest, ModelCard, ModelList, ResponsesRequest, now
from serve.serving_chat import ChatServing
from serve.serving_responses import ResponsesServing

log = logging.getLogger(__name__)


# The API answers at /v1/... and, for clients whose base URL has no /v1 (the original project's
# `OPENAI_BASE_URL=http://localhost:8000`), at the same paths without it.
API_PREFIXES = ("/v1", "")
API_PATHS = ("/models", "/chat/completions", "/responses")


def is_api_path(path: str) -> bool:
    return path.startswith("/v1/") or path in API_PATHS


class ApiKeyCheck:
    """ASGI middleware: 401 on the API's paths unless the request carries the server's key (when one is set)."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        core: ServingCore | None = getattr(self.state, "core", None)
        key = core.config.api_key if core is not None else None
        if scope["type"] == "http" and key and is_api_path(scope["path"]):
            given = Headers(scope=scope).get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                core.metrics.rejections.labels("invalid_api_key").inc()  # type: ignore[union-attr]
                response = error_response(AuthenticationError(
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def freeze_heap() -> int:
    """Collect once, then move every object alive now (the model, tokenizer, vocabulary tables,
    compiled grammars) out of the cyclic collector's reach; returns how many were frozen.

    The collector otherwise walks them on every full collection: about 385k objects with SmolLM2
    loaded, 188 ms a pass, during which no token of any request is chosen. Objects created later
    (requests, their rows) are collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def create_app(core_factory: Callable[[], ServingCore], freeze: bool = False) -> FastAPI:
    """An app whose serving core is built at start-up (model load, tokenizer preparation).

    ``freeze``: :func:`freeze_heap` once the core is built (the server process does; an app made in
    a process that goes on to do other things, such as a test run, should not)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        core = core_factory()
        app.state.core = core
        app.state.chat = ChatServing(core)
        app.state.responses = ResponsesServing(core)
        app.state.created = now()
        if freeze:
            log.info("froze %d start-up objects out of the garbage collector's passes", freeze_heap())
        log.info("serving '%s' (format %s, engine %s)", core.config.model_name, core.fmt.name, core.engine.name)
        yield
        core.executor.shutdown(wait=False, cancel_futures=True)
        # vLLM's engine runs in child processes: stop them with the server, not at interpreter exit.
        close = getattr(core.backend, "close", None)
        if close is not None:
            close()

    app = FastAPI(title="octupus-tool-call", lifespan=lifespan)
    install_error_handlers(app)
    # Wraps the routes, so no handler reads more of an oversized body than the limit.
    app.add_middleware(BodySizeLimit, max_bytes=lambda: app.state.core.config.max_request_bytes
                       if hasattr(app.state, "core") else 0,
                       on_refusal=lambda: app.state.core.metrics.rejections.labels("request_too_large").inc())

    # Pure ASGI, not @app.middleware("http"): behind Starlette's BaseHTTPMiddleware, the wrapped
    # `receive` kept Request.is_disconnected() from reporting a client that left, so a non-streaming
    # generation whose client gave up ran on to max_tokens (found by tests/test_serve_load.py).
    app.add_middleware(ApiKeyCheck, state=app.state)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def models(request: Request) -> JSONResponse:
        core: ServingCore = request.app.state.core
        names = (core.config.model_name, *core.config.aliases)
        cards = ModelList(data=[ModelCard(id=n, created=request.app.state.created) for n in names])
        return JSONResponse(cards.model_dump())

    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await request.app.state.chat.create(body, request)

    async def responses(body: ResponsesRequest, request: Request) -> Any:
        return await request.app.state.responses.create(body, request)

    for prefix in API_PREFIXES:
        # The unversioned twins are the same handlers, left out of the OpenAPI document.
        documented = prefix == "/v1"
        app.get(prefix + "/models", include_in_schema=documented)(models)
        app.post(prefix + "/chat/completions", include_in_schema=documented)(chat_completions)
        app.post(prefix + "/responses", include_in_schema=documented)(responses)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        m = request.app.state.core.metrics
        return Response(content=m.render(), media_type=m.content_type)

    return app

