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


# Keywords the layout drops on purpose: a label with no constraint, and a closed object (the listed
# properties already say it).
DROPPED = {"title"}


def _evidence(key: str, value: Any, schema: dict[str, Any]) -> list[str]:
    """Strings one of which must appear in the rendering for ``schema[key] = value`` to be shown."""
    if key in DROPPED or (key == "additionalProperties" and value is False):
        return []
    if key == "description":
        return [value.replace("\n", " ")] if isinstance(value, str) and value else []
    if key == "properties":
        return []  # each property is checked as a schema of its own (its name is on its line)
    if key == "type":
        if not isinstance(value, str):
            return [" | ".join(value)]
        shown = [value, "[]"] if value == "array" else [value]
        if isinstance(schema.get("enum"), list):  # an enum's values stand for its type
            shown += [json.dumps(v) for v in schema["enum"]]
        return shown
    if key in ("enum", "default", "const"):
        return [json.dumps(v, ensure_ascii=False) for v in (value if key == "enum" else [value])]
    if key in ("minimum", "maximum"):
        return [f"{value}"]
    if key == "format":
        return [value, json.dumps(value)]
    if key == "required":
        return [f"{name}:" for name in value]
    if key == "items":
        return []  # checked as a schema of its own
    if key in ("anyOf", "oneOf") and all(set(alt) <= {"type"} for alt in value):
        return [" | ".join(alt["type"] for alt in value), json.dumps(key)]
    return [json.dumps(key)]


def _schemas(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return []
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _schemas(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _schemas(schema["items"], f"{path}[]")
    return out


def _random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    kind = rng.choice(["string", "integer", "number", "boolean", "array", "object", "union", "enum"]
                      if depth < 2 else ["string", "integer", "number", "boolean", "enum"])
    s: dict[str, Any]
    if kind == "enum":
        s = {"type": "string", "enum": rng.sample(["red", "green", "blue", "teal"], rng.randint(1, 3))}
    elif kind == "union":
        s = {"anyOf": [{"type": "string"}, {"type": "null"}]} if rng.random() < 0.5 else {"type": ["integer", "null"]}
    elif kind == "array":
        s = {"type": "array", "items": _random_schema(rng, depth + 1)}
    elif kind == "object":
        props = {f"p{i}": _random_schema(rng, depth + 1) for i in range(rng.randint(1, 3))}
        s = {"type": "object", "properties": props, "required": rng.sample(sorted(props), rng.randint(0, len(props)))}
    else:
        s = {"type": kind}
    extras = {"description": "what it is", "title": "T", "minimum": 0, "maximum": 9, "format": "date-time",
              "pattern": "^x", "minLength": 1, "maxItems": 4, "multipleOf": 3, "examples": ["e"], "default": None,
              "uniqueItems": True, "additionalProperties": False, "nullable": True}
    for key in rng.sample(sorted(extras), rng.randint(0, 4)):
        s.setdefault(key, extras[key])
    return s


@pytest.mark.parametrize("seed", range(40))
def test_no_keyword_silently_disappears(seed: int) -> None:
    rng = random.Random(seed)
    props = {f"arg{i}": _random_schema(rng) for i in range(rng.randint(1, 4))}
    params = {"type": "object", "properties": props, "required": rng.sample(sorted(props), rng.randint(0, len(props)))}
    text = block([tool("f", params, "d")])
    lines = text.splitlines()
    for path, schema in _schemas(params):
        # The line of this schema (the tool's first line for the parameters object itself).
        if path:
            name = path.rsplit(".", 1)[-1].rstrip("[]")
            line = next(ln for ln in lines if ln.lstrip().startswith(f"- {name}"))
            rest = "\n".join(lines[lines.index(line):])
        else:
            rest = text
        for key, value in schema.items():
            if not path and key == "type" and value == "object":
                continue  # a tool's parameters are an object: its lines say so
            evidence = _evidence(key, value, schema)
            assert not evidence or any(e in rest for e in evidence), (key, value, path, text)


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
