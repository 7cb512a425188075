"""POST /v1/responses (function tools only), the endpoint BFCL's ``gpt-*`` model names and agent SDKs use.

The request becomes the same :class:`serve.inputs.GenerationInputs` the chat endpoint builds: input
items become chat messages by role, ``function_call`` items become the assistant's tool calls,
``function_call_output`` items become tool messages. Generation, grammar and validation are the core's.

The answer is one response object, or (``stream: true``) OpenAI's event sequence: ``response.created``,
``response.in_progress``, per output item ``response.output_item.added`` ... ``.done`` (a message
with its content part and ``response.output_text.delta`` / ``.done``; a function call with
``response.function_call_arguments.delta`` / ``.done``), and one terminal event carrying the whole
response: ``response.completed``, ``response.incomplete`` or ``response.failed``. Both are written by
:class:`ResponseBuilder` from the same events, so the terminal event's response is the plain answer.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from serve.core import Prepared, ServingCore
from serve.errors import APIError, BadRequest, ServerError, error_response
from serve.events import ArgsDelta, CallStart, ContentDelta, Event, Failed, Finished, ReasoningDelta
from serve.inputs import GenerationInputs, ResponseFormat, ToolChoice
from serve.protocol import ResponsesRequest, new_id, now
from serve.sse import GenerationStream
from toolcall.messages import ContentError, text_of

ENDPOINT = "responses"
# The content part types of a function_call_output's array form; any other array is tool output as JSON.
CONTENT_PART_TYPES = frozenset({"input_text", "output_text", "text", "input_image", "input_file", "input_audio"})


def input_to_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    thought: str | None = None  # a reasoning item's text, for the assistant turn it precedes
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind != "reasoning" and thought is not None and not (
                kind == "function_call" or (kind == "message" and item.get("role") == "assistant")):
            thought = None  # reasoning not followed by an assistant turn has nothing to belong to
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
            if role == "assistant" and thought is not None:
                messages[-1]["reasoning_content"], thought = thought, None
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
            if thought is not None:
                messages[-1]["reasoning_content"], thought = thought, None
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise BadRequest(f"{where}: function_call_output needs a string 'call_id'", param="input")
            output = item.get("output", "")
            if isinstance(output, list) and output and all(
                    isinstance(p, dict) and p.get("type") in CONTENT_PART_TYPES for p in output):
                # Content parts: their text, and a 400 for an image or a file (the formats carry text only).
                try:
                    output = text_of(output)
                except (ContentError, TypeError) as exc:
                    raise BadRequest(f"{where}: output parts must be text parts with a string 'text' ({exc})",
                                     param="input") from None
            elif not isinstance(output, str):
                output = json.dumps(output, ensure_ascii=False)  # any other JSON: its text
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            # The thinking of the assistant turn that follows (its content parts; a summary when that
            # is all the client kept). The reasoning format's template decides whether to show it.
            parts = item.get("content") or item.get("summary") or []
            if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                      for p in parts):
                raise BadRequest(f"{where}: a reasoning item's content must be a list of parts with a string "
                                 "'text'", param="input")
            thought = (thought or "") + "".join(p["text"] for p in parts)
        else:
            raise BadRequest(f"{where}: input items of type '{kind}' are not supported", param="input")
    return messages


# Includable values that ask for nothing this server holds back (reasoning is returned as plain text).
HARMLESS_INCLUDES = frozenset({"reasoning.encrypted_content"})


def refuse_unsupported(req: ResponsesRequest) -> None:
    """A 400 naming each Responses feature this server does not have, rather than ignoring it."""
    if req.previous_response_id is not None:
        raise BadRequest("previous_response_id: this server stores no responses; send the whole conversation "
                         "as input items", param="previous_response_id", code="previous_response_not_found")
    if req.conversation is not None:
        raise BadRequest("conversation: this server stores no conversations; send the whole conversation as "
                         "input items", param="conversation")
    if req.background:
        raise BadRequest("background responses are not supported", param="background")
    if req.prompt is not None:
        raise BadRequest("prompt: stored prompt templates are not supported; send instructions and input",
                         param="prompt")
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type not in ("text", "json_object", "json_schema"):
        raise BadRequest(f"text.format of type '{fmt.type}' is not supported; use 'text', 'json_object' or "
                         "'json_schema'", param="text.format")
    for value in req.include or []:
        if value not in HARMLESS_INCLUDES:
            raise BadRequest(f"include: '{value}' is not supported", param="include")


def function_tools(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's tools in chat form; a 400 for built-in tools (web search, file search...)."""
    tools = []
    for i, tool in enumerate(req.tools or []):
        if tool.type != "function":
            raise BadRequest(f"tools[{i}]: tool type '{tool.type}' is not supported; this server runs function "
                             "tools only", param="tools")
        if tool.name is None:
            raise BadRequest(f"tools[{i}]: a function tool needs a 'name'", param="tools")
        tools.append({"type": "function",
                      "function": tool.model_dump(exclude_none=True, include={"name", "description", "parameters"})})
    return tools


def tool_choice(req: ResponsesRequest, has_tools: bool) -> ToolChoice:
    choice = req.tool_choice
    if choice is not None and not isinstance(choice, str):
        if choice.type != "function":
            raise BadRequest(f"tool_choice of type '{choice.type}' is not supported; use 'none', 'auto', "
                             "'required' or {'type': 'function', 'name': ...}", param="tool_choice")
        if choice.name is None:
            raise BadRequest("tool_choice of type 'function' needs a 'name'", param="tool_choice")
    return ToolChoice.of(choice, has_tools)


def text_format(req: ResponsesRequest) -> ResponseFormat | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat("json_object", param="text.format")
    if not fmt.name:
        raise BadRequest("text.format of type 'json_schema' needs a 'name'", param="text.format.name")
    return ResponseFormat("json_schema", name=fmt.name, schema=fmt.schema_, strict=fmt.strict, param="text.format")


def responses_inputs(req: ResponsesRequest) -> GenerationInputs:
    refuse_unsupported(req)
    tools = function_tools(req)
    return GenerationInputs(response_format=text_format(req),
        model=req.model, messages=input_to_messages(req), tools=tools,
        tool_choice=tool_choice(req, bool(tools)),
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        max_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
        reasoning_effort=req.reasoning.effort if req.reasoning is not None else None)


class ResponseBuilder:
    """One response built from a choice's events: the output items as they open, grow and close,
    the SSE events that say so, and the response object in any state.

    A message is ``incomplete`` when the response is; a function call is ``completed`` once its
    arguments closed and validated, ``incomplete`` when generation stopped inside them.
    ``response.function_call_arguments.done`` is sent for complete calls only.
    """

    def __init__(self, req: ResponsesRequest, prompt_tokens: int) -> None:
        self.req = req
        self.prompt_tokens = prompt_tokens
        self.id = new_id("resp_")
        self.created_at = now()
        self.items: list[dict[str, Any]] = []  # every output item so far; the last may be open
        self.open = False
        self.sequence = 0
        self.final: dict[str, Any] | None = None  # the response of the terminal event, once sent
        fmt = req.text.format if req.text is not None else None
        self.text_format = fmt.model_dump(exclude_none=True, by_alias=True) if fmt is not None else {"type": "text"}

    # ------------------------------------------------------------ the response object

    def response(self, status: str, output_tokens: int | None = None, error: APIError | None = None,
                 reasoning_tokens: int = 0) -> dict[str, Any]:
        req = self.req
        named = req.tool_choice.model_dump(exclude_none=True) if hasattr(req.tool_choice, "model_dump") else None
        usage = None
        if output_tokens is not None:
            usage = {"input_tokens": self.prompt_tokens, "output_tokens": output_tokens,
                     "total_tokens": self.prompt_tokens + output_tokens,
                     "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                     "output_tokens_details": {"reasoning_tokens": reasoning_tokens}}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "model": req.model,
            "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "error": {"code": "server_error", "message": error.message} if error is not None else None,
            "instructions": req.instructions, "output": copy.deepcopy(self.items),
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "tool_choice": named or req.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "temperature": req.temperature, "top_p": req.top_p, "max_output_tokens": req.max_output_tokens,
            "text": {"format": self.text_format}, "store": False, "usage": usage,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        }

    # ------------------------------------------------------------ events

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return ev

    def start(self) -> Iterator[dict[str, Any]]:
        yield self.event("response.created", response=self.response("in_progress"))
        yield self.event("response.in_progress", response=self.response("in_progress"))

    def _add(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.items.append(item)
        self.open = True
        yield self.event("response.output_item.added", output_index=len(self.items) - 1, item=copy.deepcopy(item))

    def _close(self, status: str) -> Iterator[dict[str, Any]]:
        """Close the open item with ``status`` (completed / incomplete)."""
        if not self.open:
            return
        self.open = False
        index, item = len(self.items) - 1, self.items[-1]
        item["status"] = status
        if item["type"] == "message":
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield self.event("response.output_text.done", **common, text=part["text"], logprobs=[])
            yield self.event("response.content_part.done", **common, part=dict(part))
        elif item["type"] == "reasoning":
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield self.event("response.reasoning_text.done", **common, text=part["text"])
            yield self.event("response.content_part.done", **common, part=dict(part))
        elif status == "completed":
            yield self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=item["arguments"])
        yield self.event("response.output_item.done", output_index=index, item=copy.deepcopy(item))

    def _open_with_part(self, item: dict[str, Any], part: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Open ``item`` with one (empty) content part, which the deltas that follow fill."""
        yield from self._add(item)
        yield self.event("response.content_part.added", item_id=item["id"], output_index=len(self.items) - 1,
                         content_index=0, part=dict(part))
        item["content"].append(part)

    def take(self, ev: Event) -> Iterator[dict[str, Any]]:
        """The SSE events for one generation event (the terminal one included)."""
        if isinstance(ev, ReasoningDelta):
            # The thinking comes first, as one reasoning item whose content is the text (nothing is
            # summarised or encrypted).
            if not self.items:
                yield from self._open_with_part({"type": "reasoning", "id": new_id("rs_"), "summary": [],
                                                 "content": [], "status": "in_progress"},
                                                {"type": "reasoning_text", "text": ""})
            item = self.items[-1]
            item["content"][0]["text"] += ev.text
            yield self.event("response.reasoning_text.delta", item_id=item["id"], output_index=len(self.items) - 1,
                             content_index=0, delta=ev.text)
        elif isinstance(ev, ContentDelta):
            if not self.open or self.items[-1]["type"] != "message":
                yield from self._close("completed")  # the thinking before it
                yield from self._open_with_part({"type": "message", "id": new_id("msg_"), "status": "in_progress",
                                                 "role": "assistant", "content": []},
                                                {"type": "output_text", "text": "", "annotations": []})
            item = self.items[-1]
            item["content"][0]["text"] += ev.text
            yield self.event("response.output_text.delta", item_id=item["id"], output_index=len(self.items) - 1,
                             content_index=0, delta=ev.text, logprobs=[])
        elif isinstance(ev, CallStart):
            yield from self._close("completed")  # a call starts only after the previous one closed and validated
            yield from self._add({"type": "function_call", "id": new_id("fc_"), "call_id": ev.id, "name": ev.name,
                                  "arguments": "", "status": "in_progress"})
        elif isinstance(ev, ArgsDelta):
            item = self.items[-1]
            item["arguments"] += ev.text
            yield self.event("response.function_call_arguments.delta", item_id=item["id"],
                             output_index=len(self.items) - 1, delta=ev.text)
        elif isinstance(ev, Finished):
            status = "incomplete" if ev.reason == "length" else "completed"
            if self.open:
                if self.items[-1]["type"] in ("message", "reasoning"):
                    yield from self._close(status)
                else:
                    calls = sum(item["type"] == "function_call" for item in self.items)
                    yield from self._close("completed" if calls <= ev.complete_calls else "incomplete")
            self.final = self.response(status, ev.completion_tokens, reasoning_tokens=ev.reasoning_tokens)
            yield self.event(f"response.{status}", response=self.final)
        elif isinstance(ev, Failed):
            # Whatever was open is not complete; the client gets the error, never a half call as done.
            if self.open:
                self.open = False
                self.items[-1]["status"] = "incomplete"
            self.final = self.response("failed", ev.completion_tokens, ev.error)
            yield self.event("response.failed", response=self.final)


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


class ResponsesServing:
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    async def create(self, req: ResponsesRequest, raw: Request) -> Any:
        started = time.perf_counter()
        try:
            prep = await self.core.prepare(responses_inputs(req))
        except APIError as exc:
            return self.core.refuse(ENDPOINT, started, exc)
        if req.stream:
            cancel = threading.Event()
            return GenerationStream(self._stream(req, prep, started, cancel), cancel)
        events = await self.core.collect(prep, 0, raw.is_disconnected)
        failed = next((ev for ev in events if isinstance(ev, Failed)), None)
        if failed is not None:
            self.core.observe_request(ENDPOINT, failed.error.status, started, len(prep.prompt_ids))
            return error_response(failed.error)
        # The same builder as the stream, its events dropped: the plain answer is the stream's last response.
        builder = ResponseBuilder(req, len(prep.prompt_ids))
        for ev in events:
            for _ in builder.take(ev):
                pass
        if builder.final is None:
            exc = ServerError("generation ended without a result")
            self.core.observe_request(ENDPOINT, exc.status, started, len(prep.prompt_ids))
            return error_response(exc)
        self.core.observe_request(ENDPOINT, 200, started, len(prep.prompt_ids))
        return JSONResponse(builder.final)

    async def _stream(self, req: ResponsesRequest, prep: Prepared, started: float,
                      cancel: threading.Event) -> AsyncIterator[str]:
        builder = ResponseBuilder(req, len(prep.prompt_ids))
        status = 200
        try:
            for event in builder.start():
                yield sse(event)
            async for ev in self.core.stream(prep, 0, cancel):
                if isinstance(ev, Failed):
                    status = ev.error.status
                for event in builder.take(ev):
                    yield sse(event)
        finally:
            # Reached on normal end and when the client disconnects (GenerationStream closes the generator).
            cancel.set()
            self.core.observe_request(ENDPOINT, status, started, len(prep.prompt_ids))
