"""Tools: function names made valid for OpenAI, schemas with python type names fixed, tool lists.

Sources write tools in several shapes (OpenAI's ``{"type": "function", "function": {...}}``, a bare
``{"name", "parameters"}``, python type names such as ``dict`` or ``int``); each becomes an OpenAI
tool with a JSON Schema ``parameters`` object. A row's tools are a :class:`ToolSet`, built from
per-tool pieces so that a tool repeated across rows is encoded once.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from stages.filter_rules import Drop
from stages.parsing.json_codec import STDLIB_JSON, JsonCodec

# Tool names end up in OpenAI requests: the API allows [a-zA-Z0-9_-]{1,64}. Dots are kept only when
# the caller asks (keep_dots), because OpenAI rejects them and BFCL sends dotted names as "_".
NAME_OK = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
_NAME_BAD_RUN = re.compile(r"[^a-zA-Z0-9_.-]+")
_NAME_BAD_RUN_NODOT = re.compile(r"[^a-zA-Z0-9_-]+")


class ToolSet(NamedTuple):
    """A row's OpenAI tools as JSON text, (name, canonical schema JSON) per tool, each tool's
    name as the source wrote it, and the schema defects fixed in them.

    Built from per-tool pieces, so a tool repeated across rows is encoded once. A named tuple
    rather than a frozen dataclass: one is built per distinct tool list, and frozen dataclasses
    are several times slower to construct. Only texts and tuples: cached tool lists hold no
    dicts for the garbage collector to walk.
    """

    json: str = "[]"
    schemas: tuple[tuple[str, str], ...] = ()
    originals: tuple[str, ...] = ()  # call lists name tools this way (stages/parsing/call_list.py)
    fixes: tuple[str, ...] = ()  # stages.filter_rules.FIXES applied to these tools, each once, sorted


NO_TOOLS = ToolSet()


def sanitize_name(name: Any, keep_dots: bool = False) -> str:
    """Function name -> ``[a-zA-Z0-9_-]`` (plus ``.`` with keep_dots), at most 64 chars."""
    if not isinstance(name, str):
        raise Drop("invalid_name", f"name is {type(name).__name__}")
    bad = _NAME_BAD_RUN if keep_dots else _NAME_BAD_RUN_NODOT
    clean = bad.sub("_", name.strip()).strip("_")[:64]
    if not clean or not NAME_OK.match(clean):
        raise Drop("invalid_name", repr(name))
    return clean


_TYPE_NAMES: dict[str, str | None] = {
    "object": "object", "dict": "object", "map": "object", "mapping": "object",
    "integer": "integer", "int": "integer", "long": "integer",
    "number": "number", "float": "number", "double": "number", "decimal": "number",
    "string": "string", "str": "string", "text": "string",
    "date": "string", "datetime": "string", "time": "string",
    "boolean": "boolean", "bool": "boolean",
    "array": "array", "list": "array", "tuple": "array",
    "null": "null", "none": "null", "nonetype": "null",
    "any": None,  # no type constraint
}
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "additionalItems")


def _fix_type(value: Any) -> str | list[str] | None:
    names = value if isinstance(value, list) else [value]
    fixed: list[str] = []
    for name in names:
        if not isinstance(name, str) or name.strip().lower() not in _TYPE_NAMES:
            raise Drop("bad_tool_schema", f"unknown type {name!r}")
        mapped = _TYPE_NAMES[name.strip().lower()]
        if mapped is None:
            return None
        if mapped not in fixed:
            fixed.append(mapped)
    if not fixed:
        return None
    return fixed if isinstance(value, list) and len(fixed) > 1 else fixed[0]


def fix_schema(node: Any, fixes: list[str] | None = None) -> Any:
    """Python-style type names -> JSON Schema names, recursively; drops ``"required": null``.

    Defects that would make every correct call fail are repaired and named in ``fixes``
    (``stages.filter_rules.FIXES``): ``enum_null``, a ``None`` in an ``enum`` whose type does not
    allow null (Hermes rows write ``'enum': [None]`` for "no fixed values").
    """
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        raise Drop("bad_tool_schema", f"schema is {type(node).__name__}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            mapped = _fix_type(value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "required":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                out["required"] = value
            elif value not in (None, False, True):
                raise Drop("bad_tool_schema", "required is not a list of names")
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: fix_schema(sub, fixes) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [fix_schema(sub, fixes) for sub in value]
        elif key in _SCHEMA_ONE and isinstance(value, (dict, bool)):
            out[key] = fix_schema(value, fixes)
        elif key == "items" and isinstance(value, list):
            out[key] = [fix_schema(sub, fixes) for sub in value]
        else:
            out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    enum = out.get("enum")
    if isinstance(enum, list) and any(v is None for v in enum):
        _drop_null_from_enum(out, enum, fixes)
    return out


def _drop_null_from_enum(schema: dict[str, Any], enum: list[Any], fixes: list[str] | None) -> None:
    """``None`` in an enum is a defect when the type excludes null, or when it is the only value
    (a parameter that only accepts null); a value list left empty means no list at all."""
    declared = schema.get("type")
    allows_null = declared is None or declared == "null" or (isinstance(declared, list) and "null" in declared)
    values = [v for v in enum if v is not None]
    if allows_null and values:
        return
    if values:
        schema["enum"] = values
    else:
        del schema["enum"]
    if fixes is not None:
        fixes.append("enum_null")


def normalize_tool(tool: Any, keep_dots: bool) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """A tool in any of the seen shapes -> (original name, OpenAI tool, schema fixes applied)."""
    if not isinstance(tool, dict):
        raise Drop("bad_tool_schema", "tool is not an object")
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    original = fn.get("name")
    name = sanitize_name(original, keep_dots)
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    fixes: list[str] = []
    params = fix_schema(params, fixes)
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise Drop("bad_tool_schema", f"{name}: parameters must be an object schema")
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    description = fn.get("description")
    out = {"type": "function", "function": {
        "name": name, "description": description if isinstance(description, str) else "", "parameters": params}}
    return original, out, tuple(sorted(set(fixes)))


# (tool JSON, name, (name, canonical schema JSON), original name, schema fixes): what a ToolSet
# takes from each tool, with the (name, schema) pair built once per distinct tool.
ToolEntry = tuple[str, str, tuple[str, str], str, tuple[str, ...]]


def tool_entry(normalized: tuple[str, dict[str, Any], tuple[str, ...]], codec: JsonCodec = STDLIB_JSON) -> ToolEntry:
    """The pieces of one :func:`normalize_tool` result that a :class:`ToolSet` is built from."""
    original, tool, fixes = normalized
    fn = tool["function"]
    name = fn["name"]
    return (codec.dumps(tool), name, (name, codec.dumps_sorted(fn["parameters"])), original, fixes)


def tool_set(entries: list[ToolEntry]) -> ToolSet:
    if not entries:
        return NO_TOOLS
    texts, names, schemas, originals, fixes = zip(*entries, strict=True)
    if len(set(names)) != len(names):
        raise Drop("invalid_name", "two tools share a (sanitised) name")
    # Same text as dumps(list_of_tools): compact separators.
    return ToolSet("[" + ",".join(texts) + "]", schemas, originals,
                   tuple(sorted({f for per_tool in fixes for f in per_tool})) if any(fixes) else ())


def normalize_tools(raw_tools: Any, keep_dots: bool, codec: JsonCodec = STDLIB_JSON) -> ToolSet:
    if not isinstance(raw_tools, list):
        raise Drop("bad_tool_schema", "tool list is not a list")
    return tool_set([tool_entry(normalize_tool(t, keep_dots), codec) for t in raw_tools])


_ELEMENT_GAP = re.compile(r"\}\s*,\s*\{")


def split_elements(text: str) -> list[str] | None:
    """Cheap split of a list of objects into element bodies (the text between each ``{`` and ``}``),
    so repeated tools are read once.

    A split inside a string leaves a piece that does not parse; callers then read the whole list.
    """
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return None
    inner = body[1:-1].strip()
    if not inner:
        return []
    if not (inner.startswith("{") and inner.endswith("}")):
        return None
    # The outer braces cannot be part of a gap, so splitting inside them gives the same pieces.
    return _ELEMENT_GAP.split(inner[1:-1])

