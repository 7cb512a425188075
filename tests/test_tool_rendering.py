"""The compact tools block of the v2 rendering (toolcall/chat_template.jinja): its exact layout, and
that no schema keyword the grammar enforces silently disappears from it."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from toolcall.chat_template import TOOLS_HEADER, render_chat

EOS = "<|endoftext|>"


def block(tools: list[dict[str, Any]], tool_format: str = "v2") -> str:
    text = render_chat([{"role": "user", "content": "x"}], tools, eos_token=EOS, tool_format=tool_format)
    start = text.index(TOOLS_HEADER) + len(TOOLS_HEADER) + 1
    return text[start:text.index(EOS, start)]


def tool(name: str, parameters: Any = None, description: str | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if description is not None:
        fn["description"] = description
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


def test_layout_of_every_construct() -> None:
    params = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city,\ne.g. Paris."},
            "unit": {"type": "string", "enum": ["c", "f"], "default": "c", "description": "Unit."},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "above": {"type": "number", "minimum": 0.5},
            "when": {"type": "string", "format": "date", "title": "When"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
            "grid": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "mixed": {"type": "array", "items": {"type": ["string", "integer"]}},
            "address": {"type": "object", "description": "Where.", "additionalProperties": False,
                        "properties": {"street": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]+$"}},
                        "required": ["street"]},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}, "required": ["sku"]}},
            "fixed": {"const": 3},
            "anything": {},
        },
        "required": ["city", "lines"],
    }
    text = block([tool("get_weather", params, "Weather now.\nAnd later."), tool("ping", {"type": "object", "properties": {}})])
    assert text == "\n".join([
        "get_weather: Weather now. And later.",
        "- city: string — The city, e.g. Paris.",
        '- unit?: "c" | "f" = "c" — Unit.',
        "- days?: integer (1..7)",
        "- above?: number (>=0.5)",
        "- when?: string (date)",
        '- tags?: string[] {"items":{"maxLength":5}}',
        "- grid?: integer[][]",
        "- maybe?: string | null",
        "- either?: string | integer",
        "- mixed?: (string | integer)[]",
        "- address?: object — Where.",
        "  - street: string",
        '  - zip?: string {"pattern":"^[0-9]+$"}',
        "- lines: object[]",
        "  - sku: string",
        "  - qty?: integer (>=1)",
        "- fixed?: 3",
        "- anything?: any",
        "ping",
    ])


def test_v1_keeps_the_original_json_lines() -> None:
    tools = [tool("a", {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0}}}, "A."), tool("b")]
    assert block(tools, "v1") == "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)


def test_what_the_layout_cannot_place_follows_as_json() -> None:
    odd = tool("odd", {"type": "dict", "description": "top", "properties": {"a": {"type": "string"}},
                       "required": ["a", "ghost"], "additionalProperties": {"type": "string"}})
    text = block([odd, tool("no_object", ["not", "a", "schema"])])
    assert text == "\n".join([
        "odd",
        "- a: string",
        '- (parameters) {"type":"dict","description":"top","required":["a","ghost"],"additionalProperties":{"type":"string"}}',
        "no_object",
        '- (parameters) ["not","a","schema"]',
    ])
    nested = tool("n", {"type": "object", "properties": {
        "choice": {"oneOf": [{"type": "object", "properties": {"k": {"type": "string"}}}, {"type": "null"}]},
        "ref": {"$ref": "#/$defs/Thing"},
        "hidden_range": {"type": "array", "items": {"type": "integer", "minimum": 2, "format": "int32"}},
    }})
    assert block([nested]).splitlines()[1:] == [
        '- choice?: any {"oneOf":[{"type":"object","properties":{"k":{"type":"string"}}},{"type":"null"}]}',
        '- ref?: any {"$ref":"#/$defs/Thing"}',
        '- hidden_range?: integer[] {"items":{"minimum":2,"format":"int32"}}',
    ]


# Keywords the layout drops on purpose: a label with no constraint, and a closed object whose
# properties are listed (the list already says it).
DROPPED = {"title"}


def _evidence(key: str, value: Any, schema: dict[str, Any]) -> list[str]:
    """Strings one of which must appear in a schema's block for ``schema[key] = value`` to be shown."""
    if key in DROPPED or (key == "additionalProperties" and value is False and schema.get("properties")):
        return []
    if key == "description":
        return [value.replace("\n", " ")] if isinstance(value, str) and value else []
    if key == "properties":
        # Listed properties are checked as schemas of their own; an empty mapping must be said.
        return [] if value else ['"properties":{}']
    if key == "type":
        if not isinstance(value, str):
            return [" | ".join(value)]
        shown = [value, "[]"] if value == "array" else [value]
        if isinstance(schema.get("enum"), list):  # an enum's values stand for its type
            shown += [json.dumps(v) for v in schema["enum"]]
        return shown
    if key in ("enum", "default", "const"):
        return [json.dumps(v, ensure_ascii=False) for v in (value if key == "enum" else [value])]
    if key == "minimum":
        return [f"({value}..", f"(>={value}", f'"minimum":{value}']
    if key == "maximum":
        return [f"..{value})", f"..{value},", f"(<={value}", f'"maximum":{value}']
    if key == "format":
        return [f"({value})", f", {value})", f'"format":"{value}"']
    if key == "required":
        return [f"{name}:" for name in value]
    if key == "items":
        return []  # checked as a schema of its own
    if key in ("anyOf", "oneOf") and all(set(alt) <= {"type"} for alt in value):
        return [" | ".join(alt["type"] for alt in value), json.dumps(key)]
    return [json.dumps(key)]


def _schemas(schema: Any, name: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(the name of the parameter whose block shows it, schema) for a schema and every schema in it;
    an array's items (at any depth) are shown in their parameter's block."""
    if not isinstance(schema, dict):
        return []
    out = [(name, schema)]
    for child, sub in (schema.get("properties") or {}).items():
        out += _schemas(sub, child)
    if isinstance(schema.get("items"), dict):
        out += _schemas(schema["items"], name)
    return out


def _block(lines: list[str], name: str) -> str:
    """A parameter's line and the lines nested under it."""
    at = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(f"- {name}?:") or
              ln.lstrip().startswith(f"- {name}:"))
    indent = len(lines[at]) - len(lines[at].lstrip())
    end = at + 1
    while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1
    return "\n".join(lines[at:end])


class _Names:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"p{self.n}x"  # unique, and never a prefix of another name


def _random_schema(rng: random.Random, names: _Names, depth: int = 0) -> dict[str, Any]:
    kinds = ["string", "integer", "number", "boolean", "enum"]
    if depth < 3:
        kinds += ["array", "object", "union", "nested_array", "nullable_objects", "empty_object"]
    kind = rng.choice(kinds)
    s: dict[str, Any]
    if kind == "enum":
        s = {"type": "string", "enum": rng.sample(["red", "green", "blue", "teal"], rng.randint(1, 3))}
    elif kind == "union":
        s = {"anyOf": [{"type": "string"}, {"type": "null"}]} if rng.random() < 0.5 else {"type": ["integer", "null"]}
    elif kind == "array":
        s = {"type": "array", "items": _random_schema(rng, names, depth + 1)}
    elif kind == "nested_array":
        s = {"type": "array", "items": {"type": "array", "items": _random_object(rng, names, depth + 1)}}
    elif kind == "nullable_objects":
        s = {"type": "array", "items": {**_random_object(rng, names, depth + 1), "type": ["object", "null"]}}
    elif kind == "empty_object":
        s = {"type": "object", "properties": {}} if rng.random() < 0.5 else \
            {"type": "object", "additionalProperties": False}
    elif kind == "object":
        s = _random_object(rng, names, depth + 1)
    else:
        s = {"type": kind}
    extras = {"description": "what it is", "title": "T", "minimum": 7, "maximum": 93, "format": "date-time",
              "pattern": "^x", "minLength": 1, "maxItems": 4, "multipleOf": 3, "examples": ["e"], "default": None,
              "uniqueItems": True, "additionalProperties": False, "nullable": True}
    for key in rng.sample(sorted(extras), rng.randint(0, 4)):
        s.setdefault(key, extras[key])
    return s


def _random_object(rng: random.Random, names: _Names, depth: int) -> dict[str, Any]:
    props = {names(): _random_schema(rng, names, depth) for _ in range(rng.randint(1, 3))}
    return {"type": "object", "properties": props, "required": rng.sample(sorted(props), rng.randint(0, len(props)))}


@pytest.mark.parametrize("seed", range(60))
def test_no_keyword_silently_disappears(seed: int) -> None:
    rng = random.Random(seed)
    names = _Names()
    params = _random_object(rng, names, 0)
    if rng.random() < 0.3:  # keywords of the parameters object itself
        params.update(rng.choice([{"minProperties": 1}, {"description": "top"}, {"format": "x", "minimum": 3}]))
    text = block([tool("f", params, "d")])
    lines = text.splitlines()
    for name, schema in _schemas(params):
        where = _block(lines, name) if name else text
        for key, value in schema.items():
            if not name and key == "type" and value == "object":
                continue  # a tool's parameters are an object: its lines say so
            evidence = _evidence(key, value, schema)
            if not name and key in ("minimum", "format", "description"):
                evidence = [json.dumps(key)]  # the parameters object's own keywords are written as JSON
            assert not evidence or any(e in where for e in evidence), (key, value, name, text)


def test_nested_arrays_and_nullable_objects_keep_their_properties() -> None:
    params = {"type": "object", "properties": {
        "grid": {"type": "array", "items": {"type": "array", "items": {
            "type": "object", "properties": {"sku": {"type": "string", "pattern": "^A"}}, "required": ["sku"]}}},
        "maybe": {"type": "array", "items": {"type": ["object", "null"], "properties": {"a": {"type": "string"}}}},
        "closed": {"type": "object", "properties": {}},
    }}
    assert block([tool("f", params)]).splitlines()[1:] == [
        "- grid?: object[][]",
        '  - sku: string {"pattern":"^A"}',
        "- maybe?: (object | null)[]",
        "  - a?: string",
        '- closed?: object {"properties":{}}',
    ]


def test_token_ratio_on_the_generators_tools(smollm2_tokenizer: Any) -> None:
    """The compact block is at most 0.6x the JSON lines' tokens on the generator's tool lists (the
    benchmark measures more lists: python -m bench tools)."""
    from bench.tools_bench import generator_lists, tools_block

    lists = list(generator_lists(40))
    assert len(lists) > 60

    def count(text: str) -> int:
        return len(smollm2_tokenizer(text, add_special_tokens=False)["input_ids"])

    v1 = sum(count(tools_block(t, "v1")) for t in lists)
    v2 = sum(count(tools_block(t, "v2")) for t in lists)
    assert v2 <= 0.6 * v1, (v1, v2)
