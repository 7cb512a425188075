"""Tool-call arguments: strict JSON (never evaluated) and their canonical bytes.

Strict means what ``json.loads`` accepts minus ``NaN`` / ``Infinity`` (not JSON, and a schema
validator would compare them as numbers); nothing may follow the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

JSON_WHITESPACE = " \t\n\r"


def json_object_end(text: str, start: int = 0) -> int | None:
    """Where the JSON object that begins at ``text[start:]`` (after optional whitespace) closes: the
    index just past its closing brace; None while it has not closed, or when no object begins there.

    Only the nesting of brackets outside strings is followed, not the grammar of the values: it
    tells where an object written under a JSON grammar ends (a proper prefix of an object never
    closes), not whether it is valid (``load_object`` and the schema judge that).
    """
    pos = start
    while pos < len(text) and text[pos] in JSON_WHITESPACE:
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        return None
    depth = 0
    in_string = False
    escaped = False
    for i in range(pos, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ArgumentsError(ValueError):
    """Tool-call arguments that are not one strict JSON object."""


def reject_constant(name: str) -> Any:
    """``parse_constant`` hook of ``json.loads``: refuse ``NaN``, ``Infinity`` and ``-Infinity``."""
    raise ValueError(f"non-standard JSON constant {name}")


def loads_strict(text: str) -> Any:
    """``json.loads`` without the non-standard constants; raises ValueError."""
    return json.loads(text, parse_constant=reject_constant)


def load_object(text: str) -> dict[str, Any]:
    """Strict JSON that must be an object; raises :class:`ArgumentsError`."""
    try:
        value = loads_strict(text)
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
        return compact_json(load_object(arguments))
    if isinstance(arguments, Mapping):
        try:
            return compact_json(dict(arguments))
        except ValueError as exc:  # NaN / Infinity inside a dict
            raise ArgumentsError(str(exc)) from None
    raise ArgumentsError(f"arguments must be a JSON string or an object, got {type(arguments).__name__}")
