"""Request-size and tool-schema limits that refuse hostile input before any engine sees it.

A body over the limit is refused with 413 while it streams in (chunked bodies carry no
Content-Length); schemas too deep, too wide or with too many tools are 400s naming the tool, so no
compile step can run away on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.exceptions import HTTPException

from serve.errors import APIError, BadRequest


class RequestTooLarge(APIError):
    status = 413
    type = "invalid_request_error"


@dataclass(frozen=True)
class SchemaLimits:
    max_tools: int = 128
    max_depth: int = 64  # nesting of JSON values inside one schema (each object level takes two)
    max_enum: int = 1024  # values of one enum
    max_nodes: int = 20_000  # JSON values in one schema


def check_tool_limits(schema: Any, where: str, limits: SchemaLimits, param: str = "tools") -> None:
    """Raise a 400 when ``schema`` is deeper, wider or larger than ``limits`` allow (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = 0
    refs: list[str] = []
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise BadRequest(f"{where}: schema is too large (over {limits.max_nodes} JSON values)",
                             param=param, code="schema_too_large")
        if depth > limits.max_depth:
            raise BadRequest(f"{where}: schema is nested deeper than {limits.max_depth} levels",
                             param=param, code="schema_too_large")
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            enum = node.get("enum")
            if isinstance(enum, list) and len(enum) > limits.max_enum:
                raise BadRequest(f"{where}: an enum has {len(enum)} values; at most {limits.max_enum} are allowed",
                                 param=param, code="schema_too_large")
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    for ref in refs:
        _check_ref_chain(schema, ref, where, param)


def _resolve(schema: Any, ref: str, where: str, param: str) -> Any:
    """The node a local ``#/json/pointer`` reference names; a 400 for any other or a dangling one."""
    if ref != "#" and not ref.startswith("#/"):
        # Remote or relative references would make an engine fetch or guess: only local pointers.
        raise BadRequest(f"{where}: $ref {ref[:100]!r} is not supported (only local '#/...' references)",
                         param=param, code="invalid_schema_ref")
    node = schema
    for raw in ref[2:].split("/") if ref != "#" else []:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise BadRequest(f"{where}: $ref {ref[:100]!r} does not resolve", param=param,
                             code="invalid_schema_ref")
    return node


def _check_ref_chain(schema: Any, ref: str, where: str, param: str) -> None:
    """A 400 when following ``$ref`` from ``ref`` comes back to itself: such a schema has no finite instance
    and sends validators into endless recursion."""
    seen: set[str] = set()
    while True:
        if ref in seen:
            raise BadRequest(f"{where}: $ref cycle through {ref[:100]!r}", param=param, code="invalid_schema_ref")
        seen.add(ref)
        target = _resolve(schema, ref, where, param)
        if not (isinstance(target, dict) and isinstance(target.get("$ref"), str)):
            return
        ref = target["$ref"]


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: Callable[[], int], on_refusal: Callable[[], None] | None = None) -> None:
        self.app = app
        self._max_bytes = max_bytes
        self._on_refusal = on_refusal

    @property
    def max_bytes(self) -> int:
        return self._max_bytes()

    def _refusal(self) -> RequestTooLarge:
        return RequestTooLarge(f"request body is larger than {self.max_bytes} bytes", code="request_too_large")

    async def _send_error(self, send: Any, error: APIError) -> None:
        if self._on_refusal is not None:
            self._on_refusal()
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._send_error(send, self._refusal())
                    return
        received = 0
        started = False

        async def counted_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._send_error(send, self._refusal())


class _TooLarge(HTTPException):
    """Raised from ``receive`` so FastAPI's body reading passes it on as an HTTP error (413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_bytes} bytes")
