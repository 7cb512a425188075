"""OpenAI chat messages as both training data and requests carry them: the text of a content field,
an assistant message's calls (OpenAI ``tool_calls`` or legacy ``function_call``), and copies of
messages whose call arguments are canonical."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolcall.arguments import canonical_arguments

# Text part types of the chat API ("text") and of the Responses API ("input_text", "output_text").
TEXT_PART_TYPES = ("text", "input_text", "output_text")


class ContentError(ValueError):
    """A content part that is not text (images, audio, files): the formats carry text only."""


def text_of(content: Any) -> str:
    """The text of a message's content: a string, None, or a list of text parts (dicts or objects
    with ``type`` and ``text``); raises :class:`ContentError` on any other part."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if kind not in TEXT_PART_TYPES or text is None:
            raise ContentError(f"content part of type '{kind}' is not supported (text only)")
        parts.append(text)
    return "".join(parts)


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


def canonicalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``messages`` whose call arguments are compact JSON strings.

    The template cannot re-serialise a JSON string, so callers that want the model to see (and learn)
    exactly the bytes a canonical call has canonicalise first. Raises
    :class:`toolcall.arguments.ArgumentsError` on arguments that are not a JSON object (a row to
    drop, not to train on).
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
