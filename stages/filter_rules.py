"""The filter rules, defined once and used by both the polars stage and the row-by-row baseline.

A row is dropped by the first rule it breaks, in :data:`RULES` order, and counted under that
rule's name in ``metrics/filter.json``.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from stages.normalize import NORMALIZERS, Drop, Parsers, finalize

# Every rule a row can be dropped by. A row is counted once, under the first rule it breaks: the
# reading rules (up to tool_result_mismatch) as they are met while a row is normalized, then the
# table rules from unknown_tool on, in this order.
RULES = (
    "unparseable",             # not JSON, not the source's schema, or the normalizer failed
    "toxic",                   # flagged by the source itself (WildChat)
    "unsupported_tool_format", # ToolACE variants that list tools as free text, not JSON
    "bad_tool_schema",         # a tool's parameters are not a usable JSON schema
    "invalid_name",            # a function name that cannot be sanitised, or two tools that collide
    "bad_call",                # a call that cannot be read (python-like list, <tool_call>, function_call)
    "role_order",              # system first, then user/assistant alternating, tools after calls
    "empty_turn",              # a user/assistant/tool turn with no text (and no calls)
    "tool_result_mismatch",    # results that answer no call, the wrong call, or calls left unanswered
    "unknown_tool",            # a call to a function the row does not offer
    "invalid_arguments",       # arguments that do not validate against the tool's schema
    "too_long",                # rendered row longer than max_chars
    "duplicate",               # exact duplicate of another row of the same source
    "function_cap",            # a function already has max_rows_per_function rows
)


def prepare_row(kind: str, line: str, parsers: Parsers) -> tuple[str, str, list[tuple[str, str]]]:
    """Normalize one raw line and check its structure: (messages JSON, tools JSON, calls).

    ``calls`` lists (sanitised name, arguments JSON) of every call in the row. Raises
    :class:`Drop`; any other exception means the row is unreadable (the caller counts it).
    """
    if kind not in NORMALIZERS:
        raise ValueError(f"unknown kind {kind!r}")
    try:
        row = json.loads(line)
    except ValueError:
        raise Drop("unparseable", "line is not JSON") from None
    if not isinstance(row, dict):
        raise Drop("unparseable", "line is not a JSON object")
    conv = NORMALIZERS[kind](row, parsers)
    check_structure(conv.messages)
    messages_json, tools_json = finalize(conv)
    return messages_json, tools_json, calls_of(conv.messages)


def content_key(messages_json: str, tools_json: str) -> int:
    """Stable 64-bit key of a row's content: orders rows without depending on input order."""
    digest = hashlib.blake2b(messages_json.encode() + b"\x00" + tools_json.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def check_structure(messages: list[dict[str, Any]]) -> None:
    """Role order, non-empty turns and call/result pairing; raises :class:`Drop`."""
    open_calls = 0
    prev = None
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "system":
            if i != 0:
                raise Drop("role_order", "system message after the start")
        elif role == "user":
            if prev not in (None, "system", "assistant"):
                raise Drop("role_order", f"user after {prev}")
        elif role == "assistant":
            if prev not in ("user", "tool"):
                raise Drop("role_order", f"assistant after {prev}")
        elif role == "tool":
            if prev not in ("assistant", "tool") or open_calls == 0:
                raise Drop("tool_result_mismatch", "tool message without a pending call")
            open_calls -= 1
        else:
            raise Drop("role_order", f"unknown role {role!r}")
        if open_calls and role != "tool":
            raise Drop("tool_result_mismatch", "calls left unanswered before the next turn")
        if role == "assistant" and msg.get("tool_calls"):
            open_calls = len(msg["tool_calls"])
        elif role != "system" and role != "tool" and not (isinstance(msg.get("content"), str) and msg["content"].strip()):
            raise Drop("empty_turn", f"empty {role} turn")
        elif role == "tool" and not msg["content"].strip():
            raise Drop("empty_turn", "empty tool result")
        prev = role
    # A row must end on something the model learns to produce: an answer or a call.
    if prev != "assistant":
        raise Drop("role_order", f"conversation ends on a {prev or 'nothing'} turn")


def schema_key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False)


@lru_cache(maxsize=100_000)
def compiled_validator(schema_json: str) -> jsonschema.protocols.Validator:
    """One validator per distinct schema text; raises Drop('bad_tool_schema') if the schema is invalid."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise Drop("bad_tool_schema", exc.message) from None
    return cls(schema)


def schema_ok(schema_json: str) -> bool:
    try:
        compiled_validator(schema_json)
    except Drop:
        return False
    return True


@lru_cache(maxsize=500_000)
def arguments_ok(schema_json: str, arguments_json: str) -> bool:
    """Validity of one (schema, arguments) pair; each distinct pair is validated once."""
    return compiled_validator(schema_json).is_valid(json.loads(arguments_json))


def calls_of(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"])
            for m in messages for c in (m.get("tool_calls") or ())]
