"""The octupus tool-call format: the one definition training and serving both import.

What lives here:

- the special tokens (``SYSTEM`` ... ``CONTENT``, ``SPECIAL_TOKENS``) and the words whose mean
  embedding initialises each new row (``EMBEDDING_INIT_WORDS``);
- ``CHAT_TEMPLATE``, read from ``chat_template.jinja`` next to this module (saved with every edited
  tokenizer; nobody keeps a copy);
- ``OCTUPUS_SHAPE``, the engine-neutral description of an assistant turn that
  ``serve.constraints`` compiles into a grammar (:class:`ToolCallShape`);
- ``parse_output``: generated text after ``<|ASSISTANT|>`` back to content / OpenAI tool calls;
- ``render_assistant`` (the exact generation span the template emits for one assistant message),
  ``canonical_arguments`` / ``canonicalize_messages`` (argument strings rewritten as compact JSON,
  the bytes ``parse_output`` returns) and ``render_chat`` (the template without a tokenizer).

Rendered conversation (``eos`` is the tokenizer's ``eos_token``)::

    <|SYSTEM|>{system}\\n# Tools\\n{function JSON, one per line}{eos}
    <|USER|>{text}{eos}
    <|ASSISTANT|><|CONTENT|>{text}{eos}
    <|ASSISTANT|><|FUNCTION_CALL|>{name}<|PARAMETERS|>{json}[<|FUNCTION_CALL|>...]{eos}
    <|FUNCTION_OUTPUT|>{name}\\n{result}{eos}

Recipes: the template variable ``tool_format`` selects ``"v2"`` (default: one
``<|FUNCTION_OUTPUT|>`` per tool message) or ``"v1"`` (the original project's legacy recipe: the
results answering one assistant turn merged into one ``<|FUNCTION_OUTPUT|>``). Both recipes accept
OpenAI messages (``tool_calls`` / role ``tool``) and legacy ones (``function_call`` / role
``function``). An assistant message with ``tool_calls`` renders its calls only: the format has one
decision per turn, so text sent alongside calls is not part of the turn.

Passing ``tool_format`` (transformers 5.19, trl 1.16): every extra keyword of
``tokenizer.apply_chat_template(messages, tools=..., tool_format="v1", ...)`` reaches the template.
trl's ``SFTTrainer`` merges a per-row dataset column ``chat_template_kwargs`` (a dict, e.g.
``{"tool_format": "v1"}``) into its ``apply_chat_template`` call; ``SFTConfig`` has no field for it.

Importing this module never imports torch (it is a data module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

SYSTEM = "<|SYSTEM|>"
USER = "<|USER|>"
ASSISTANT = "<|ASSISTANT|>"
FUNCTION_CALL = "<|FUNCTION_CALL|>"
PARAMETERS = "<|PARAMETERS|>"
FUNCTION_OUTPUT = "<|FUNCTION_OUTPUT|>"
CONTENT = "<|CONTENT|>"

# Order is part of the format: edited tokenizers append them in this order.
SPECIAL_TOKENS: list[str] = [SYSTEM, USER, ASSISTANT, FUNCTION_CALL, PARAMETERS, FUNCTION_OUTPUT, CONTENT]

# The original project's initialisation words; a new row starts as the mean embedding of the
# words' tokens, so the untrained model already "knows" roughly what each marker means.
EMBEDDING_INIT_WORDS: dict[str, str] = {
    SYSTEM: "system",
    USER: "user",
    ASSISTANT: "assistant",
    FUNCTION_CALL: "tool call",
    PARAMETERS: "arguments",
    FUNCTION_OUTPUT: "tool response",
    CONTENT: "content",
}

TOOL_FORMATS = ("v1", "v2")
DEFAULT_TOOL_FORMAT = "v2"
TOOLS_HEADER = "# Tools"

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
CHAT_TEMPLATE: str = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")

# End-of-turn strings of the tokenizers this project ships with (Qwen2.5, SmolLM2, tiny BPE); used
# by parse_output when the caller does not name its eos token.
KNOWN_EOS_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_end|>", "</s>")
# A role marker inside generated text means the model ran past its turn without eos.
_TURN_BREAKS: tuple[str, ...] = (SYSTEM, USER, ASSISTANT, FUNCTION_OUTPUT)


def reserved_marker_in(text: str, eos_tokens: Sequence[str] = KNOWN_EOS_TOKENS) -> str | None:
    """The first format marker or eos string found in ``text`` (data text must contain none: it
    would render as a control token and end or split a turn), else None. For data filters."""
    for marker in (*SPECIAL_TOKENS, *eos_tokens):
        if marker in text:
            return marker
    return None


@dataclass(frozen=True)
class ToolCallShape:
    """How an assistant turn looks, independent of any constraint engine.

    A text answer is ``text_open + text``. A call is
    ``call_open + name + name_close + <JSON object arguments> + call_close``; several calls are
    joined by ``call_separator``. The turn ends with the tokenizer's eos token. ``special_tokens``
    lists the marker strings that are single special tokens (a grammar must match them as tokens,
    not as text); an empty ``text_open`` means text needs no marker.
    """

    text_open: str
    call_open: str
    name_close: str
    call_close: str = ""
    call_separator: str = ""
    special_tokens: frozenset[str] = field(default_factory=frozenset)

    def render_call(self, name: str, arguments: str) -> str:
        return f"{self.call_open}{name}{self.name_close}{arguments}{self.call_close}"

    def render_calls(self, calls: Iterable[tuple[str, str]]) -> str:
        return self.call_separator.join(self.render_call(n, a) for n, a in calls)


OCTUPUS_SHAPE = ToolCallShape(
    text_open=CONTENT,
    call_open=FUNCTION_CALL,
    name_close=PARAMETERS,
    call_close="",
    call_separator="",
    special_tokens=frozenset({CONTENT, FUNCTION_CALL, PARAMETERS}),
)


class ArgumentsError(ValueError):
    """Tool-call arguments that are not one strict JSON object."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _load_strict_object(text: str) -> dict[str, Any]:
    """Parse strict JSON (no NaN/Infinity, nothing after the value) and require an object."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ArgumentsError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArgumentsError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def compact_json(value: Any) -> str:
    """The byte form of arguments everywhere in this project: compact, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_arguments(arguments: str | Mapping[str, Any] | None) -> str:
    """Arguments (JSON string, dict or None) as compact JSON; raises :class:`ArgumentsError`."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return compact_json(_load_strict_object(arguments))
    if isinstance(arguments, Mapping):
        try:
            return compact_json(dict(arguments))
        except ValueError as exc:  # NaN / Infinity inside a dict
            raise ArgumentsError(str(exc)) from None
    raise ArgumentsError(f"arguments must be a JSON string or an object, got {type(arguments).__name__}")


def canonicalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``messages`` whose call arguments are compact JSON strings.

    The template cannot re-serialise a JSON string, so callers that want the model to see (and learn)
    exactly the bytes ``parse_output`` returns canonicalise first. Raises :class:`ArgumentsError` on
    arguments that are not a JSON object (a row to drop, not to train on).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = dict(message)
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                fn["arguments"] = canonical_arguments(fn.get("arguments"))
                call["function"] = fn
                calls.append(call)
            msg["tool_calls"] = calls
        if msg.get("function_call"):
            fn = dict(msg["function_call"])
            fn["arguments"] = canonical_arguments(fn.get("arguments"))
            msg["function_call"] = fn
        out.append(msg)
    return out


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def assistant_calls(message: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, raw arguments) of an assistant message's calls, OpenAI or legacy form."""
    if message.get("tool_calls"):
        return [
            ((c.get("function") or c)["name"], (c.get("function") or c).get("arguments"))
            for c in message["tool_calls"]
        ]
    if message.get("function_call"):
        fc = message["function_call"]
        return [(fc["name"], fc.get("arguments"))]
    return []


def render_assistant(message: Mapping[str, Any], eos_token: str = "") -> str:
    """The text the template emits for one assistant message after ``<|ASSISTANT|>``.

    This is exactly the template's generation span (pass the tokenizer's ``eos_token``). Arguments
    given as dicts render compact; strings render verbatim (see :func:`canonicalize_messages`).
    """
    calls = assistant_calls(message)
    if not calls:
        return f"{CONTENT}{_text_of(message.get('content'))}{eos_token}"
    parts = []
    for name, arguments in calls:
        if arguments is None:
            rendered = "{}"
        elif isinstance(arguments, str):
            rendered = arguments
        else:
            rendered = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        parts.append(OCTUPUS_SHAPE.render_call(name, rendered))
    return OCTUPUS_SHAPE.call_separator.join(parts) + eos_token


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # compact JSON object

    def to_openai(self, call_id: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParsedOutput:
    """``complete`` is False when the text was cut mid-call or a call's arguments are not one
    JSON object; ``tool_calls`` then holds only the calls that parsed, and ``error`` says why."""

    content: str | None
    tool_calls: list[ParsedCall]
    complete: bool
    ended: bool = False  # an eos (or a role marker) closed the turn
    error: str | None = None


def _cut_turn(text: str, eos_tokens: Sequence[str]) -> tuple[str, bool]:
    cut = len(text)
    for marker in (*eos_tokens, *_TURN_BREAKS):
        if marker:
            pos = text.find(marker)
            if 0 <= pos < cut:
                cut = pos
    return text[:cut], cut < len(text)


def parse_output(text: str, eos_token: str | Sequence[str] | None = None) -> ParsedOutput:
    """Parse generated text after ``<|ASSISTANT|>`` (special tokens kept, eos present or not).

    The turn ends at the first eos (``eos_token``, default: the known ones) or role marker. Text
    that starts with no decision token (an unconstrained, untrained model) is returned as content.
    Arguments are parsed with ``json.loads`` (never evaluated) and returned as compact JSON.
    """
    if eos_token is None:
        eos_tokens: Sequence[str] = KNOWN_EOS_TOKENS
    elif isinstance(eos_token, str):
        eos_tokens = (eos_token,)
    else:
        eos_tokens = tuple(eos_token)
    turn, ended = _cut_turn(text, eos_tokens)

    if turn.startswith(CONTENT):
        return ParsedOutput(content=turn[len(CONTENT):], tool_calls=[], complete=True, ended=ended)
    if not turn.startswith(FUNCTION_CALL):
        if not turn:
            return ParsedOutput(content=None, tool_calls=[], complete=ended, ended=ended,
                                error=None if ended else "empty output")
        if FUNCTION_CALL.startswith(turn) or CONTENT.startswith(turn):
            return ParsedOutput(content=None, tool_calls=[], complete=False, ended=ended,
                                error="cut inside the decision token")
        return ParsedOutput(content=turn, tool_calls=[], complete=True, ended=ended)

    calls: list[ParsedCall] = []
    for chunk in turn[len(FUNCTION_CALL):].split(FUNCTION_CALL):
        name, sep, arguments = chunk.partition(PARAMETERS)
        if not sep:
            return ParsedOutput(None, calls, complete=False, ended=ended, error=f"call {name!r} cut before its arguments")
        if not name:
            return ParsedOutput(None, calls, complete=False, ended=ended, error="call without a name")
        try:
            canonical = canonical_arguments(arguments)
        except ArgumentsError as exc:
            return ParsedOutput(None, calls, complete=False, ended=ended, error=f"call {name!r}: {exc}")
        calls.append(ParsedCall(name=name, arguments=canonical))
    return ParsedOutput(content=None, tool_calls=calls, complete=True, ended=ended)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    eos_token: str,
    tool_format: str = DEFAULT_TOOL_FORMAT,
    add_generation_prompt: bool = False,
    chat_template: str | None = None,
) -> str:
    """Render with the project template without a tokenizer (transformers' own Jinja environment,
    so the result is what ``apply_chat_template(tokenize=False)`` returns)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[list(messages)],
        tools=list(tools) if tools else None,
        chat_template=chat_template or CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        eos_token=eos_token,
        tool_format=tool_format,
    )
    return rendered[0]


def format_metadata(eos_token: str, tool_format: str = DEFAULT_TOOL_FORMAT) -> dict[str, Any]:
    """The ``octupus.json`` written next to an edited model: enough to rebuild the shape."""
    if tool_format not in TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {TOOL_FORMATS}, got {tool_format!r}")
    return {
        "format": "octupus",
        "special_tokens": SPECIAL_TOKENS,
        "eos_token": eos_token,
        "tool_format": tool_format,
        "shape": {
            "text_open": OCTUPUS_SHAPE.text_open,
            "call_open": OCTUPUS_SHAPE.call_open,
            "name_close": OCTUPUS_SHAPE.name_close,
            "call_close": OCTUPUS_SHAPE.call_close,
            "call_separator": OCTUPUS_SHAPE.call_separator,
            "special_tokens": sorted(OCTUPUS_SHAPE.special_tokens),
        },
    }


__all__ = [
    "ASSISTANT", "CHAT_TEMPLATE", "CONTENT", "DEFAULT_TOOL_FORMAT", "EMBEDDING_INIT_WORDS", "FUNCTION_CALL",
    "FUNCTION_OUTPUT", "OCTUPUS_SHAPE", "PARAMETERS", "SPECIAL_TOKENS", "SYSTEM", "TOOL_FORMATS", "USER",
    "ArgumentsError", "ParsedCall", "ParsedOutput", "ToolCallShape", "canonical_arguments",
    "canonicalize_messages", "compact_json", "format_metadata", "parse_output", "render_assistant",
    "render_chat", "reserved_marker_in",
]
