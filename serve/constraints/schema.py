"""Checking and bounding tool schemas before any engine sees them.

Fail closed: a schema that is not valid JSON Schema is a 400 naming the tool. Bounds keep weak
models from running away (seen with every engine: endless strings, 100-digit integers): strings
without their own limit get ``maxLength``, integers and numbers without bounds get a magnitude
bound, and objects that list their properties get ``additionalProperties: false`` unless they say
otherwise. Every bound only narrows what the schema allows, so output that fits the bounded schema
still validates against the client's original one, which is what the server checks after generation.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema_rs

from serve.constraints.base import JsonLimits
from serve.errors import BadRequest

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "contains")


def meta_check(schema: dict[str, Any], where: str, param: str) -> None:
    """A 400 naming ``where`` unless ``schema`` is valid JSON Schema (against its ``$schema``'s meta-schema,
    2020-12 by default).

    jsonschema-rs checks the meta-schema (about 15 us a tool schema; the Python jsonschema took 2-3 ms,
    which at 128 tools was a third of a second on every request). The regular expressions in ``pattern``
    and ``patternProperties`` are compiled with Python's ``re`` as well, because the server validates
    calls with the Python jsonschema after generation: what passes here must not fail there.
    """
    try:
        jsonschema_rs.meta.validate(schema)
    except Exception as exc:  # ValidationError; ReferencingError or ValueError for a $schema it does not know
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BadRequest(f"{where}: invalid JSON schema: {first}", param=param) from None
    for pattern in _patterns(schema):
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise BadRequest(f"{where}: invalid JSON schema: pattern {pattern[:100]!r} is not a valid regular "
                             f"expression ({exc})", param=param) from None


def _patterns(schema: Any) -> list[str]:
    """Every ``pattern`` value and ``patternProperties`` key in ``schema`` (iterative)."""
    found, stack = [], [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            if isinstance(node.get("patternProperties"), dict):
                found.extend(k for k in node["patternProperties"] if isinstance(k, str))
            for key, value in node.items():
                if key in _DATA_KEYWORDS:
                    continue  # data, not schemas: a "pattern" key in a const or an enum value is text
                if key in _SCHEMA_MAPS and isinstance(value, dict):
                    stack.extend(value.values())  # names -> schemas (a property may be named "enum")
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found


_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def check_answer_schema(schema: Any, where: str, param: str = "response_format") -> dict[str, Any]:
    """A ``response_format`` schema, checked: any valid JSON Schema object (the answer may be any JSON value)."""
    if not isinstance(schema, dict):
        raise BadRequest(f"{where}: the schema must be a JSON Schema object", param=param)
    meta_check(schema, where, param)
    return schema


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """The tool's parameters schema, checked; ``None`` means a call without arguments."""
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise BadRequest(f"{where}: parameters must be a JSON Schema object", param="tools")
    meta_check(schema, where, "tools")
    kind = schema.get("type")
    if kind is not None and kind != "object":
        raise BadRequest(f"{where}: parameters must describe an object (type 'object'), got '{kind}'",
                         param="tools")
    return schema


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    return set()


def bound_schema(schema: dict[str, Any], limits: JsonLimits) -> dict[str, Any]:
    """A copy of ``schema`` with the bounds described in the module docstring."""
    out = copy.deepcopy(schema)
    _bound(out, limits)
    if "type" not in out and "properties" in out:
        out["type"] = "object"
    return out


def _bound(node: Any, limits: JsonLimits) -> None:
    if not isinstance(node, dict):
        return
    kinds = _types(node)
    fixed = "enum" in node or "const" in node
    free_string = "string" in kinds and not fixed and "pattern" not in node and "format" not in node
    if free_string and limits.max_string_length > 0:
        node["maxLength"] = min(int(node.get("maxLength", limits.max_string_length)), limits.max_string_length)
    if kinds & {"integer", "number"} and not fixed and limits.max_integer_digits > 0:
        bound = 10 ** limits.max_integer_digits - 1
        if "minimum" not in node and "exclusiveMinimum" not in node:
            node["minimum"] = -bound
        if "maximum" not in node and "exclusiveMaximum" not in node:
            node["maximum"] = bound
    if "object" in kinds or "properties" in node:
        if limits.forbid_extra_properties and "properties" in node and "additionalProperties" not in node \
                and "patternProperties" not in node:
            node["additionalProperties"] = False
    for key in _SUBSCHEMA_LISTS:
        for child in node.get(key, []) if isinstance(node.get(key), list) else []:
            _bound(child, limits)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for child in node[key].values():
                _bound(child, limits)
    for key in _SUBSCHEMA_ONE:
        _bound(node.get(key), limits)


_NO_CONSTRAINT = {"type", "properties", "additionalProperties", "required", "title", "description", "$schema"}


def is_empty_object(schema: dict[str, Any]) -> bool:
    """True for a bounded schema that admits only ``{}`` (a tool without parameters): engines write it
    as the literal ``{}``, never ``{ }`` or ``{\n}``, which clients compare as text."""
    return (schema.get("type") == "object" and not schema.get("properties")
            and schema.get("additionalProperties") is False and not schema.get("required")
            and set(schema) <= _NO_CONSTRAINT)
