"""The filter rules, defined once and used by both the polars stage and the row-by-row baseline.

A row that breaks a rule is dropped and counted once, under that rule's name in
``metrics/filter.json`` (see :data:`RULES`).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Callable

import jsonschema
from jsonschema.exceptions import SchemaError

from stages.normalize import NORMALIZERS, Drop, NeedsStdlibJson, Parsers, finalize, read_conversation, stdlib_parsers

# Every rule a row can be dropped by. A row is counted once, under the first rule it breaks: first
# the reading rules (unparseable ... tool_result_mismatch) in the order they are met while the row
# is normalized; then the table rules in this order: bad_tool_schema (JSON Schema meta-check of
# each offered tool), unknown_tool, invalid_arguments, too_long, duplicate, function_cap.
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


Prepared = tuple[str, str, list[tuple[str, str]], tuple[tuple[str, str], ...]]


def prepare_row(kind: str, line: str, parsers: Parsers) -> Prepared:
    """Normalize one raw line and check its structure: (messages JSON, tools JSON, calls, schemas).

    ``calls`` lists (sanitised name, arguments JSON) of every call in the row, ``schemas``
    (name, canonical schema JSON) of every offered tool. Raises
    :class:`Drop`; any other exception means the row is unreadable (the caller counts it).
    """
    if kind not in NORMALIZERS:
        raise ValueError(f"unknown kind {kind!r}")
    try:
        return _prepare(kind, line, parsers)
    except NeedsStdlibJson:
        return _prepare(kind, line, stdlib_parsers(parsers))


def _prepare(kind: str, line: str, parsers: Parsers) -> Prepared:
    conv = read_conversation(kind, line, parsers)
    check_structure(conv.messages)
    messages_json, tools_json = finalize(conv, parsers.json)
    return messages_json, tools_json, calls_of(conv.messages), conv.tools.schemas


def content_key(messages_json: str, tools_json: str) -> int:
    """Stable 64-bit key of a row's content: orders rows without depending on input order."""
    hasher = hashlib.blake2b(messages_json.encode(), digest_size=8)
    hasher.update(b"\x00")
    hasher.update(tools_json.encode())
    return int.from_bytes(hasher.digest(), "little")


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


Check = Callable[[Any], bool]

# JSON Schema draft 7 type tests, as jsonschema defines them (bool is not a number; 2.0 is an integer).
_TYPE_TESTS: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}
_is_number = _TYPE_TESTS["number"]
_ANNOTATIONS = {"description", "title", "default", "examples", "format", "$comment"}
_SUPPORTED = _ANNOTATIONS | {"type", "properties", "required", "enum", "items", "additionalProperties",
                             "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                             "minLength", "maxLength", "minItems", "maxItems"}


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(c(v) for c in checks)


def _bound(schema: dict[str, Any], key: str, test: Check, fails: Callable[[Any, Any], bool]) -> Check | None:
    limit = schema[key]
    if not _is_number(limit):
        return None
    return lambda v: not (test(v) and fails(v, limit))


def compile_simple(schema: Any) -> Check | None:
    """A plain-Python check equal to draft-7 validation for the common keyword subset, else None.

    Tool schemas are mostly type/properties/required/enum/items/bounds; jsonschema walks them
    keyword by keyword on every call, which dominates filtering time. Anything outside the subset
    (``$ref``, ``anyOf``, ``pattern``, boolean schemas, non-string enums...) returns None and the
    caller uses jsonschema itself.
    """
    if not isinstance(schema, dict) or not set(schema) <= _SUPPORTED:
        return None
    checks: list[Check] = []
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not isinstance(names, list) or not names or not all(n in _TYPE_TESTS for n in names):
            return None
        tests = [_TYPE_TESTS[n] for n in names]
        checks.append(tests[0] if len(tests) == 1 else (lambda v: any(t(v) for t in tests)))
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
            return None
        allowed = frozenset(values)
        checks.append(lambda v: isinstance(v, str) and v in allowed)
    for key, test, fails in (
        ("minimum", _is_number, lambda v, m: v < m), ("maximum", _is_number, lambda v, m: v > m),
        ("exclusiveMinimum", _is_number, lambda v, m: v <= m), ("exclusiveMaximum", _is_number, lambda v, m: v >= m),
        ("minLength", _TYPE_TESTS["string"], lambda v, m: len(v) < m),
        ("maxLength", _TYPE_TESTS["string"], lambda v, m: len(v) > m),
        ("minItems", _TYPE_TESTS["array"], lambda v, m: len(v) < m),
        ("maxItems", _TYPE_TESTS["array"], lambda v, m: len(v) > m),
    ):
        if key in schema:
            check = _bound(schema, key, test, fails)
            if check is None:
                return None
            checks.append(check)
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            return None
        checks.append(lambda v: not isinstance(v, dict) or all(r in v for r in required))
    properties: dict[str, Check] = {}
    if "properties" in schema:
        if not isinstance(schema["properties"], dict):
            return None
        for name, sub in schema["properties"].items():
            compiled = compile_simple(sub)
            if compiled is None:
                return None
            properties[name] = compiled
        checks.append(lambda v: not isinstance(v, dict)
                      or all(check(v[name]) for name, check in properties.items() if name in v))
    if "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        if extra is False:
            checks.append(lambda v: not isinstance(v, dict) or all(k in properties for k in v))
        elif isinstance(extra, dict):
            extra_check = compile_simple(extra)
            if extra_check is None:
                return None
            checks.append(lambda v: not isinstance(v, dict)
                          or all(extra_check(x) for k, x in v.items() if k not in properties))
        elif extra is not True:
            return None
    if "items" in schema:
        item_check = compile_simple(schema["items"])
        if item_check is None:
            return None
        checks.append(lambda v: not isinstance(v, list) or all(item_check(x) for x in v))
    return _all(checks)


@lru_cache(maxsize=100_000)
def compiled_validator(schema_json: str) -> Check:
    """One check per distinct schema text; raises Drop('bad_tool_schema') if the schema is invalid."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise Drop("bad_tool_schema", exc.message) from None
    fast = compile_simple(schema) if cls is jsonschema.Draft7Validator else None
    return fast if fast is not None else cls(schema).is_valid


def schema_ok(schema_json: str) -> bool:
    try:
        compiled_validator(schema_json)
    except Drop:
        return False
    return True


def arguments_ok(schema_json: str, arguments_json: str) -> bool:
    """Validity of one (schema, arguments) pair; each distinct pair is validated once."""
    return compiled_validator(schema_json)(json.loads(arguments_json))


def calls_of(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"])
            for m in messages for c in (m.get("tool_calls") or ())]
