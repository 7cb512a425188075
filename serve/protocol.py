"""OpenAI request and response types (the subset this server implements).

Requests ignore unknown fields, as OpenAI's API does for fields it does not use here (``store``,
``user``, ``metadata``...), but every field the server acts on is typed and range-checked, so a bad
value is a 400 naming the field. Importing this module never imports torch or vLLM.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# ---------------------------------------------------------------- chat completions: request


class FunctionDef(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionCall(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # An assistant turn's thinking, as reasoning servers return it (vLLM and DeepSeek: reasoning_content;
    # newer vLLM: reasoning). The reasoning format's template decides whether to show it again.
    reasoning_content: str | None = None
    reasoning: str | None = None


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaSpec(_Request):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJsonObject(_Request):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormatParam = Annotated[ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
                                Field(discriminator="type")]


class ChatTemplateKwargs(_Request):
    enable_thinking: bool | None = None


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)  # torch's generator range
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormatParam | None = None
    # Reasoning models: the effort (OpenAI's values; "none" turns thinking off) and the template's
    # switches, as vLLM and SGLang take them ({"enable_thinking": false}).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None


# ---------------------------------------------------------------- chat completions: response


class CompletionTokensDetails(_Out):
    reasoning_tokens: int = 0


class UsageInfo(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None


class ToolCallOut(_Out):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None  # a reasoning model's thinking (reasoning formats only)


class Choice(_Out):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class ChatCompletionResponse(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo
    system_fingerprint: str | None = None


# ---------------------------------------------------------------- responses API: request


class ResponsesTool(_Request):
    # Any type parses, so that a built-in tool (web_search, file_search...) gets a 400 naming it
    # (serving_responses) rather than a validation error about a missing name.
    type: str = "function"
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesToolChoice(_Request):
    type: str  # "function" with a name; other types (built-in tools, allowed_tools) are refused by name
    name: str | None = None


class ResponsesTextFormat(_Request):
    type: str  # text, json_object or json_schema; any other is refused by name (serving_responses)
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponsesText(_Request):
    format: ResponsesTextFormat | None = None


class ResponsesReasoning(_Request):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: str | None = None  # accepted; the thinking is returned whole, never summarised


class ResponsesRequest(_Request):
    model: str
    # Items are validated by hand in serving_responses: their shapes vary by "type" and an error
    # must name the offending item.
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_output_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)  # torch's generator range
    stream: bool = False
    store: bool | None = None  # accepted either way; nothing is stored (the response says store: false)
    text: ResponsesText | None = None
    reasoning: ResponsesReasoning | None = None
    include: list[str] | None = None
    # Typed only to be refused with a clear 400 (serving_responses.refuse_unsupported); `metadata`,
    # `truncation`... are ignored like any other unknown field.
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "octupus"


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]
