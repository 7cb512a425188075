"""POST /v1/chat/completions: one class that returns a response, an SSE stream or an error."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve.core import (ArgsDelta, CallStart, ContentDelta, Failed, Finished, Prepared, ServingCore, assemble)
from serve.errors import APIError, error_response
from serve.protocol import (AssistantMessage, ChatCompletionRequest, ChatCompletionResponse, Choice, FunctionCall,
                            ToolCallOut, UsageInfo, new_id, now)

ENDPOINT = "chat_completions"


def tool_choice_of(choice: Any, has_tools: bool) -> tuple[str, str | None]:
    """(mode, function name) from either API's tool_choice; mode is none|auto|required|named."""
    if choice is None:
        return ("auto" if has_tools else "none"), None
    if isinstance(choice, str):
        return choice, None
    name = choice.function.name if hasattr(choice, "function") else choice.name
    return "named", name


class GenerationStream(StreamingResponse):
    """An SSE response that stops its generation however the response ends.

    Starlette does not close the body iterator when the client disconnects while a chunk is being
    sent: the abandoned generator is finalised only when the garbage collector gets to it, possibly
    much later, and until then the worker goes on generating for nobody, up to max_tokens, holding
    the queue. Seen under load (tests/test_serve_load.py): 1 of 32 disconnects ran a 1,200-token
    generation to its end. Setting ``cancel`` and closing the iterator here makes the stop immediate.
    """

    def __init__(self, content: AsyncIterator[str], cancel: threading.Event) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.cancel = cancel

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()
            # Runs the generator's own cleanup (request metrics) now; it has no await in its finally,
            # so this completes even inside a cancelled scope.
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


class ChatServing:
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def _prepare(self, req: ChatCompletionRequest) -> Prepared:
        from serve.formats import normalize_messages

        self.core.check_model(req.model)
        messages = normalize_messages([m.model_dump(exclude_none=True) for m in req.messages])
        tools = [{"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in req.tools or []]
        mode, name = tool_choice_of(req.tool_choice, bool(tools))
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return self.core.prepare(messages, tools, mode, name,
                                 True if req.parallel_tool_calls is None else req.parallel_tool_calls,
                                 max_tokens=req.max_completion_tokens or req.max_tokens,
                                 temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=stop)

    async def create(self, req: ChatCompletionRequest, raw: Request) -> Any:
        started = time.perf_counter()
        try:
            prep = await self.core.prepare_off_loop(ENDPOINT, started, lambda: self._prepare(req))
        except APIError as exc:
            return error_response(exc)
        if req.stream:
            cancel = threading.Event()
            return GenerationStream(self._stream(req, prep, started, cancel), cancel)
        try:
            results = [assemble(await self.core.collect(prep, i, raw.is_disconnected)) for i in range(req.n)]
        except APIError as exc:
            self.core.observe_request(ENDPOINT, exc.status, started, len(prep.prompt_ids))
            return error_response(exc)
        choices = []
        for i, r in enumerate(results):
            calls = [ToolCallOut(id=cid, function=FunctionCall(name=name, arguments=args)) for cid, name, args in r.calls]
            choices.append(Choice(index=i, finish_reason=r.finish_reason,  # type: ignore[arg-type]
                                  message=AssistantMessage(content=r.content, tool_calls=calls or None)))
        completion = sum(r.completion_tokens for r in results)
        body = ChatCompletionResponse(
            id=new_id("chatcmpl-"), created=now(), model=req.model, choices=choices,
            usage=UsageInfo(prompt_tokens=len(prep.prompt_ids), completion_tokens=completion,
                            total_tokens=len(prep.prompt_ids) + completion))
        self.core.observe_request(ENDPOINT, 200, started, len(prep.prompt_ids))
        return JSONResponse(body.model_dump(mode="json"))

    async def _stream(self, req: ChatCompletionRequest, prep: Prepared, started: float,
                      cancel: threading.Event) -> AsyncIterator[str]:
        rid, created = new_id("chatcmpl-"), now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                    "model": req.model, "choices": choices}
            if include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        completion = 0
        status = 200
        try:
            for i in range(req.n):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None}])
                async for ev in self.core.stream(prep, i, cancel):
                    delta: dict[str, Any] | None = None
                    finish = None
                    if isinstance(ev, ContentDelta):
                        delta = {"content": ev.text}
                    elif isinstance(ev, CallStart):
                        delta = {"tool_calls": [{"index": ev.index, "id": ev.id, "type": "function",
                                                 "function": {"name": ev.name, "arguments": ""}}]}
                    elif isinstance(ev, ArgsDelta):
                        delta = {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}
                    elif isinstance(ev, Finished):
                        delta, finish = {}, ev.reason
                        completion += ev.completion_tokens
                    elif isinstance(ev, Failed):
                        status = ev.error.status
                        completion += ev.completion_tokens
                        yield f"data: {json.dumps(ev.error.body())}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    yield chunk([{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}])
            if include_usage:
                p = len(prep.prompt_ids)
                yield chunk([], {"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion})
            yield "data: [DONE]\n\n"
        finally:
            # Reached on normal end and when the client disconnects (GenerationStream closes the generator).
            cancel.set()
            self.core.observe_request(ENDPOINT, status, started, len(prep.prompt_ids))
