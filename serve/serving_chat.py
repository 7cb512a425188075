"""POST /v1/chat/completions: the request becomes :class:`serve.inputs.GenerationInputs`; the answer is
a response, an SSE stream or an error, written from the core's events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from serve.core import Prepared, ServingCore
from serve.errors import APIError, error_response
from serve.events import ArgsDelta, CallStart, ContentDelta, Failed, Finished, ReasoningDelta, assemble
from serve.inputs import GenerationInputs, ResponseFormat, ToolChoice
from serve.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    CompletionTokensDetails,
    FunctionCall,
    ResponseFormatJsonSchema,
    ToolCallOut,
    UsageInfo,
    new_id,
    now,
)
from serve.sse import GenerationStream

ENDPOINT = "chat_completions"


def response_format(req: ChatCompletionRequest) -> ResponseFormat | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if isinstance(rf, ResponseFormatJsonSchema):
        spec = rf.json_schema
        return ResponseFormat("json_schema", name=spec.name, schema=spec.schema_, strict=spec.strict)
    return ResponseFormat("json_object")


def chat_inputs(req: ChatCompletionRequest) -> GenerationInputs:
    tools = [{"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in req.tools or []]
    return GenerationInputs(response_format=response_format(req),
        model=req.model, messages=[m.model_dump(exclude_none=True) for m in req.messages], tools=tools,
        tool_choice=ToolChoice.of(req.tool_choice, bool(tools)),
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature, top_p=req.top_p,
        seed=req.seed, stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
        thinking=req.chat_template_kwargs.enable_thinking if req.chat_template_kwargs else None,
        reasoning_effort=req.reasoning_effort)


class ChatServing:
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    async def create(self, req: ChatCompletionRequest, raw: Request) -> Any:
        started = time.perf_counter()
        try:
            prep = await self.core.prepare(chat_inputs(req))
        except APIError as exc:
            return self.core.refuse(ENDPOINT, started, exc)
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
            calls = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in r.calls]
            choices.append(Choice(index=i, finish_reason=r.finish_reason,  # type: ignore[arg-type]
                                  message=AssistantMessage(content=r.content, tool_calls=calls or None,
                                                           reasoning_content=r.reasoning)))
        completion = sum(r.completion_tokens for r in results)
        details = (CompletionTokensDetails(reasoning_tokens=sum(r.reasoning_tokens for r in results))
                   if self.core.fmt.reasoning is not None else None)
        body = ChatCompletionResponse(
            id=new_id("chatcmpl-"), created=now(), model=req.model, choices=choices,
            usage=UsageInfo(prompt_tokens=len(prep.prompt_ids), completion_tokens=completion,
                            total_tokens=len(prep.prompt_ids) + completion, completion_tokens_details=details))
        self.core.observe_request(ENDPOINT, 200, started, len(prep.prompt_ids))
        out = body.model_dump(mode="json")
        if details is None:  # a model that does not reason: the answer has no reasoning fields
            out["usage"].pop("completion_tokens_details")
            for choice in out["choices"]:
                choice["message"].pop("reasoning_content")
        return JSONResponse(out)

    async def _stream(self, req: ChatCompletionRequest, prep: Prepared, started: float,
                      cancel: threading.Event) -> AsyncIterator[str]:
        rid, created = new_id("chatcmpl-"), now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
            body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                    "model": req.model, "choices": choices}
            if include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        completion = 0
        reasoning_tokens = 0
        status = 200
        try:
            for i in range(req.n):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None}])
                async for ev in self.core.stream(prep, i, cancel):
                    delta: dict[str, Any] | None = None
                    finish = None
                    if isinstance(ev, ReasoningDelta):
                        delta = {"reasoning_content": ev.text}
                    elif isinstance(ev, ContentDelta):
                        delta = {"content": ev.text}
                    elif isinstance(ev, CallStart):
                        delta = {"tool_calls": [{"index": ev.index, "id": ev.id, "type": "function",
                                                 "function": {"name": ev.name, "arguments": ""}}]}
                    elif isinstance(ev, ArgsDelta):
                        delta = {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}
                    elif isinstance(ev, Finished):
                        delta, finish = {}, ev.reason
                        completion += ev.completion_tokens
                        reasoning_tokens += ev.reasoning_tokens
                    elif isinstance(ev, Failed):
                        status = ev.error.status
                        completion += ev.completion_tokens
                        yield f"data: {json.dumps(ev.error.body())}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    yield chunk([{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}])
            if include_usage:
                p = len(prep.prompt_ids)
                usage: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": completion,
                                         "total_tokens": p + completion}
                if self.core.fmt.reasoning is not None:
                    usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
                yield chunk([], usage)
            yield "data: [DONE]\n\n"
        finally:
            # Reached on normal end and when the client disconnects (GenerationStream closes the generator).
            cancel.set()
            self.core.observe_request(ENDPOINT, status, started, len(prep.prompt_ids))
