"""The filter rules, defined once and used by both the polars stage and the row-by-row baseline.

A row that breaks a rule is dropped and counted once, under that rule's name in
``metrics/filter.json`` (see :data:`RULES`).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any, Callable

import jsonschema
import orjson
from jsonschema.exceptions import SchemaError

from stages.normalize import (FAST_JSON, NORMALIZERS, Drop, NeedsStdlibJson, Parsers, finalize, finalize_keyed,
                              read_conversation, stdlib_parsers)

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


Keyed = tuple[str, str, list[tuple[str, str]], tuple[tuple[str, str], ...], int]


def prepare_row_keyed(kind: str, line: str, parsers: Parsers) -> Keyed:
    """:func:`prepare_row` plus the row's :func:`content_key`, the same values computed with less
    work when ``parsers`` uses the fast codec. Raises like :func:`prepare_row`."""
    if kind not in NORMALIZERS:
        raise ValueError(f"unknown kind {kind!r}")
    if parsers.json is FAST_JSON:
        try:
            conv = read_conversation(kind, line, parsers)
            check_structure(conv.messages)
            messages_json, tools_json, key = finalize_keyed(conv)
            return messages_json, tools_json, conv.calls, conv.tools.schemas, key
        except NeedsStdlibJson:
            parsers = stdlib_parsers(parsers)
    messages_json, tools_json, calls, schemas = prepare_row(kind, line, parsers)
    return messages_json, tools_json, calls, schemas, content_key(messages_json, tools_json)


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
    """Role order, non-empty turns and call/result pairing; raises :class:`Drop`.

    Per turn the checks run in this order: the role may follow the previous one (role_order),
    no calls are left unanswered (tool_result_mismatch), the turn has text (empty_turn).
    """
    open_calls = 0
    prev = None
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "tool":
            if open_calls == 0 or (prev != "assistant" and prev != "tool"):
                raise Drop("tool_result_mismatch", "tool message without a pending call")
            open_calls -= 1
            if not msg["content"].strip():
                raise Drop("empty_turn", "empty tool result")
        elif role == "user" or role == "assistant":
            if role == "user" and not (prev is None or prev == "system" or prev == "assistant"):
                raise Drop("role_order", f"user after {prev}")
            if role == "assistant" and not (prev == "user" or prev == "tool"):
                raise Drop("role_order", f"assistant after {prev}")
            if open_calls:
                raise Drop("tool_result_mismatch", "calls left unanswered before the next turn")
            tool_calls = msg.get("tool_calls") if role == "assistant" else None
            if tool_calls:
                open_calls = len(tool_calls)
            else:
                content = msg.get("content")
                if not (isinstance(content, str) and content.strip()):
                    raise Drop("empty_turn", f"empty {role} turn")
        elif role == "system":
            if i != 0:
                raise Drop("role_order", "system message after the start")
        else:
            raise Drop("role_order", f"unknown role {role!r}")
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
_BOUND_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                   "minLength", "maxLength", "minItems", "maxItems")
_SUPPORTED = _ANNOTATIONS | {"type", "properties", "required", "enum", "items", "additionalProperties",
                             "pattern", *_BOUND_KEYWORDS}


# Types whose draft-7 test is a plain isinstance (bool is an int in Python, so not number/integer).
_PLAIN_TYPES: dict[str, type] = {"string": str, "object": dict, "array": list, "boolean": bool}


def _number_or_none(schema: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(usable, limit): a bound must be a number for the fast path; absent bounds are None."""
    if key not in schema:
        return True, None
    return _is_number(schema[key]), schema[key]


def compile_simple(schema: Any) -> Check | None:
    """A plain-Python check equal to draft-7 validation for the common keyword subset, else None.

    Tool schemas are mostly type/properties/required/enum/items/bounds/pattern; jsonschema walks
    them keyword by keyword on every call, which dominates filtering time. Anything outside the
    subset (``$ref``, ``anyOf``, boolean schemas, non-string enums...) returns None and the caller
    uses jsonschema itself. Each schema node becomes one function with its tests written out (no
    generator or small function per keyword): it runs once per distinct (schema, arguments) pair.
    """
    if not isinstance(schema, dict) or not set(schema) <= _SUPPORTED:
        return None
    plain_type: type | None = None
    type_tests: tuple[Check, ...] = ()
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not isinstance(names, list) or not names or not all(n in _TYPE_TESTS for n in names):
            return None
        if len(names) == 1 and names[0] in _PLAIN_TYPES:
            plain_type = _PLAIN_TYPES[names[0]]
        else:
            type_tests = tuple(_TYPE_TESTS[n] for n in names)
    allowed: frozenset[str] | None = None
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
            return None
        allowed = frozenset(values)
    bounds = {key: _number_or_none(schema, key) for key in _BOUND_KEYWORDS}
    if not all(usable for usable, _ in bounds.values()):
        return None
    lo, hi, xlo, xhi, min_len, max_len, min_items, max_items = (bounds[k][1] for k in _BOUND_KEYWORDS)
    number_bounds = not (lo is None and hi is None and xlo is None and xhi is None)
    length_bounds = not (min_len is None and max_len is None)
    item_bounds = not (min_items is None and max_items is None)
    search: Callable[[str], Any] | None = None
    if "pattern" in schema:
        try:
            search = re.compile(schema["pattern"]).search  # jsonschema: re.search(pattern, instance)
        except (re.error, TypeError):
            return None
    required: tuple[str, ...] = ()
    if "required" in schema:
        if not isinstance(schema["required"], list) or not all(isinstance(r, str) for r in schema["required"]):
            return None
        required = tuple(schema["required"])
    properties: dict[str, Check] = {}
    if "properties" in schema:
        if not isinstance(schema["properties"], dict):
            return None
        for name, sub in schema["properties"].items():
            compiled = compile_simple(sub)
            if compiled is None:
                return None
            properties[name] = compiled
    no_extra = False
    extra_check: Check | None = None
    if "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        if extra is False:
            no_extra = True
        elif isinstance(extra, dict):
            extra_check = compile_simple(extra)
            if extra_check is None:
                return None
        elif extra is not True:
            return None
    item_check: Check | None = None
    if "items" in schema:
        item_check = compile_simple(schema["items"])
        if item_check is None:
            return None
    property_items = tuple(properties.items())
    object_rules = bool(required or property_items or no_extra or extra_check is not None)

    def check(v: Any) -> bool:
        if plain_type is not None:
            if not isinstance(v, plain_type):
                return False
        elif type_tests:
            for test in type_tests:
                if test(v):
                    break
            else:
                return False
        if allowed is not None and not (isinstance(v, str) and v in allowed):
            return False
        if isinstance(v, str):
            if length_bounds and ((min_len is not None and len(v) < min_len)
                                  or (max_len is not None and len(v) > max_len)):
                return False
            if search is not None and search(v) is None:
                return False
        elif isinstance(v, dict):
            if object_rules:
                for r in required:
                    if r not in v:
                        return False
                for name, sub in property_items:
                    if name in v and not sub(v[name]):
                        return False
                if no_extra or extra_check is not None:
                    for k, x in v.items():
                        if k not in properties and (no_extra or not extra_check(x)):  # type: ignore[misc]
                            return False
        elif isinstance(v, list):
            if item_bounds and ((min_items is not None and len(v) < min_items)
                                or (max_items is not None and len(v) > max_items)):
                return False
            if item_check is not None:
                for x in v:
                    if not item_check(x):
                        return False
        elif number_bounds and isinstance(v, (int, float)) and not isinstance(v, bool):
            if ((lo is not None and v < lo) or (hi is not None and v > hi)
                    or (xlo is not None and v <= xlo) or (xhi is not None and v >= xhi)):
                return False
        return True

    return check


_SIMPLE_TYPES = frozenset(("array", "boolean", "integer", "null", "number", "object", "string"))
_STRING_KEYWORDS = frozenset(("description", "title", "format", "$comment"))
_NUMBER_KEYWORDS = frozenset(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))
_COUNT_KEYWORDS = frozenset(("minLength", "maxLength", "minItems", "maxItems"))


def _unique_strings(value: Any, allowed: frozenset[str] | None = None) -> bool:
    return (isinstance(value, list) and all(isinstance(x, str) for x in value) and len(set(value)) == len(value)
            and (allowed is None or all(x in allowed for x in value)))


def _compiles(pattern: str) -> bool:
    """The metaschema's "regex" format, as jsonschema's format checker tests it."""
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def surely_meets_metaschema(schema: Any) -> bool:
    """True when the draft-7 metaschema accepts ``schema`` for sure; False means "ask jsonschema".

    ``check_schema`` walks the whole metaschema with ``$ref`` resolution, milliseconds per schema.
    For the keyword subset of :func:`compile_simple` the metaschema only asks for value shapes
    (a string, a number, a non-negative integer, unique strings, nested schemas), checked here
    directly. Never used to reject: a False sends the schema to ``check_schema``, which has the
    final word and the error message.
    """
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not set(schema) <= _SUPPORTED:
        return False
    for key, value in schema.items():
        if key in _STRING_KEYWORDS:
            ok = isinstance(value, str)
        elif key in _NUMBER_KEYWORDS:
            ok = _is_number(value)
        elif key in _COUNT_KEYWORDS:
            ok = _TYPE_TESTS["integer"](value) and value >= 0
        elif key == "type":
            ok = (value in _SIMPLE_TYPES if isinstance(value, str)
                  else bool(value) and _unique_strings(value, _SIMPLE_TYPES))
        elif key == "required":
            ok = _unique_strings(value)
        elif key in ("enum", "examples"):
            ok = isinstance(value, list)
        elif key == "pattern":
            ok = isinstance(value, str) and _compiles(value)
        elif key == "properties":
            ok = isinstance(value, dict) and all(surely_meets_metaschema(sub) for sub in value.values())
        elif key == "additionalProperties":
            ok = surely_meets_metaschema(value)
        elif key == "items":
            ok = (bool(value) and all(surely_meets_metaschema(sub) for sub in value) if isinstance(value, list)
                  else surely_meets_metaschema(value))
        else:  # "default": any value
            ok = key == "default"
        if not ok:
            return False
    return True


@lru_cache(maxsize=100_000)
def compiled_validator(schema_json: str) -> Check:
    """One check per distinct schema text; raises Drop('bad_tool_schema') if the schema is invalid."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    if not (cls is jsonschema.Draft7Validator and surely_meets_metaschema(schema)):
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


# orjson reads integers of 19 digits or more as floats when they pass 64 bits; json keeps them exact.
_LONG_NUMBER = re.compile(r"\d{19}")


def arguments_value(arguments_json: str) -> Any:
    """The value of an arguments JSON text, exactly as ``json.loads`` reads it (orjson when that is safe)."""
    if _LONG_NUMBER.search(arguments_json) is None:
        try:
            return orjson.loads(arguments_json)
        except orjson.JSONDecodeError:
            pass  # NaN/Infinity, lone surrogates: json's reading (or its error)
    return json.loads(arguments_json)


def arguments_ok(schema_json: str, arguments_json: str) -> bool:
    """Validity of one (schema, arguments) pair; each distinct pair is validated once."""
    return compiled_validator(schema_json)(arguments_value(arguments_json))


def calls_of(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"])
            for m in messages for c in (m.get("tool_calls") or ())]
