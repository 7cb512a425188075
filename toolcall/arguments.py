"""Tool-call arguments: strict JSON (never evaluated) and their canonical bytes.

Strict means what ``json.loads`` accepts minus ``NaN`` / ``Infinity`` (not JSON, and a schema
validator would compare them as numbers); nothing may follow the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


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
