"""Tool schemas checked once, call arguments validated fast: a small JSON-Schema compiler.

``compiled_validator(schema JSON)`` checks a tool's parameters against the draft-7 metaschema
(the ``bad_tool_schema`` rule) and returns a check of argument values (the ``invalid_arguments``
rule), one per distinct schema text. For the keyword subset tool schemas nearly always use, the
check is plain Python compiled from the schema (:func:`compile_simple`), equal to ``jsonschema``'s
verdict and much faster; anything outside the subset is validated by ``jsonschema`` itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from stages.filter_rules import Drop

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

