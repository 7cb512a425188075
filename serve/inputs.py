"""What an endpoint asks of the core, as plain data.

Each endpoint turns its own request type (chat completions, responses) into one
:class:`GenerationInputs`; :meth:`serve.core.ServingCore.prepare` does everything after that
(model check, conversation rules, tool checks, prompt, grammar). A new endpoint, or a streaming
variant of one, only needs its conversion and its own way of writing the events out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None  # the function a "named" choice forces

    @classmethod
    def of(cls, choice: Any, has_tools: bool) -> ToolChoice:
        """From either API's ``tool_choice``: absent, a mode string, or a named function (chat:
        ``{"type": "function", "function": {"name"}}``, responses: ``{"type": "function", "name"}``)."""
        if choice is None:
            return cls("auto" if has_tools else "none")
        if isinstance(choice, str):
            return cls(choice)  # type: ignore[arg-type]  # the protocol types admit only the modes
        name = choice.function.name if hasattr(choice, "function") else choice.name
        return cls("named", name)


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output, from either API (chat: ``response_format``; responses: ``text.format``).

    ``json_object``: any JSON object; ``json_schema``: one JSON value valid against ``schema``. A
    ``text`` format asks for nothing and is passed as ``None``. ``strict`` is accepted either way:
    the schema is always enforced by the grammar and checked again after generation.
    """

    kind: Literal["json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    param: str = "response_format"  # the request field, as errors name it ("text.format" on Responses)

    @property
    def label(self) -> str:
        return f"{self.param} '{self.name}'" if self.name else f"{self.param} {self.kind}"


@dataclass(frozen=True)
class GenerationInputs:
    model: str
    messages: list[dict[str, Any]]  # OpenAI chat messages, checked by the core (serve.conversation)
    tools: list[dict[str, Any]]  # OpenAI chat tools: {"type": "function", "function": {name, description, parameters}}
    tool_choice: ToolChoice
    parallel_tool_calls: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    response_format: ResponseFormat | None = None
    # Reasoning formats: the family's switch (chat_template_kwargs.enable_thinking; None = the
    # model's default, on) and the effort (chat: reasoning_effort; responses: reasoning.effort).
    thinking: bool | None = None
    reasoning_effort: str | None = None
