"""POST /v1/responses (function tools only), the endpoint BFCL's ``gpt-*`` model names use.

The request becomes the same :class:`serve.inputs.GenerationInputs` the chat endpoint builds: input
items become chat messages by role, ``function_call`` items become the assistant's tool calls,
``function_call_output`` items become tool messages. Generation, grammar and validation are the core's.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from serve.core import ServingCore
from serve.errors import APIError, BadRequest, error_response
from serve.events import assemble
from serve.inputs import GenerationInputs, ToolChoice
from serve.protocol import ResponsesRequest, new_id, now
from toolcall.messages import ContentError, text_of

ENDPOINT = "responses"


def input_to_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise BadRequest(f"{where}: unknown role {role!r}", param="input")
            try:
                text = text_of(item.get("content"))
            except ContentError as exc:
                raise BadRequest(f"{where}: {exc}", param="input") from None
            except (AttributeError, TypeError):
                raise BadRequest(f"{where}: content must be a string or a list of text parts", param="input") from None
            messages.append({"role": role, "content": text})
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise BadRequest(f"{where}: function_call needs a string '{key}'", param="input")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            # A call right after an assistant message (text or calls) belongs to that same turn.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise BadRequest(f"{where}: function_call_output needs a string 'call_id'", param="input")
            output = item.get("output", "")
            if not isinstance(output, str):
                try:
                    output = text_of(output)
                except (ContentError, AttributeError, TypeError):
                    output = json.dumps(output, ensure_ascii=False)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            continue  # nothing to replay for a model without reasoning items
        else:
            raise BadRequest(f"{where}: input items of type '{kind}' are not supported", param="input")
    return messages


def responses_inputs(req: ResponsesRequest) -> GenerationInputs:
    if req.stream:
        raise BadRequest("streaming is not supported on /v1/responses; use /v1/chat/completions", param="stream")
    tools = [{"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type", "strict"})}
             for t in req.tools or []]
    return GenerationInputs(
        model=req.model, messages=input_to_messages(req), tools=tools,
        tool_choice=ToolChoice.of(req.tool_choice, bool(tools)),
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        max_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed)


class ResponsesServing:
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    async def create(self, req: ResponsesRequest, raw: Request) -> Any:
        started = time.perf_counter()
        try:
            prep = await self.core.prepare(responses_inputs(req))
        except APIError as exc:
            return self.core.refuse(ENDPOINT, started, exc)
        try:
            result = assemble(await self.core.collect(prep, 0, raw.is_disconnected))
        except APIError as exc:
            self.core.observe_request(ENDPOINT, exc.status, started, len(prep.prompt_ids))
            return error_response(exc)
        output: list[dict[str, Any]] = []
        if result.content:
            output.append({"type": "message", "id": new_id("msg_"), "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": result.content, "annotations": []}]})
        for call in result.calls:
            output.append({"type": "function_call", "id": new_id("fc_"), "call_id": call.id, "name": call.name,
                           "arguments": call.arguments, "status": "completed"})
        incomplete = result.finish_reason == "length"
        tool_choice: Any = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else \
            (req.tool_choice or "auto")
        body = {
            "id": new_id("resp_"), "object": "response", "created_at": now(), "model": req.model,
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None, "instructions": req.instructions, "output": output,
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "tool_choice": tool_choice,
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "temperature": req.temperature, "top_p": req.top_p, "max_output_tokens": req.max_output_tokens,
            "store": False,
            "usage": {"input_tokens": len(prep.prompt_ids), "output_tokens": result.completion_tokens,
                      "total_tokens": len(prep.prompt_ids) + result.completion_tokens,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        }
        self.core.observe_request(ENDPOINT, 200, started, len(prep.prompt_ids))
        return JSONResponse(body)
