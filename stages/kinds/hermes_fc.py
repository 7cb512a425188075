"""NousResearch/hermes-function-calling-v1: its synthetic writer and its normalizer.

Raw schema: ``{"id", "conversations": [{"from": "system"|"human"|"gpt"|"tool", "value": str}],
"tools"?: str, "category", "subcategory", "task"}``. The tools sit in a ``<tools>`` block of the
system prompt (a python repr or JSON list; the ``tools`` column may or may not be there), calls in
``<tool_call>`` tags (a python-repr or JSON object, sometimes with literal ``\\n``), results in
``<tool_response>`` tags.
"""

from __future__ import annotations

import random
import re
from typing import Any

from stages.filter_rules import Drop
from stages.kinds.writing import Row, dumps, joined, random_uuid
from stages.parsing.conversation import Conversation, ConversationBuilder, turns_of
from stages.parsing.json_codec import JsonCodec
from stages.parsing.literals import parse_loose
from stages.parsing.parsers import Parsers
from stages.parsing.tools import NO_TOOLS, ToolSet
from stages.synthetic.cases import Call, Case
from stages.synthetic.function_bank import BY_NAME, openai_tool

# --------------------------------------------------------------------------- synthetic writer

# Each function rendered once per format (see writing.joined).
_TOOLS_REPR: dict[str, str] = {}
_TOOLS_JSON: dict[str, str] = {}

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions about "
    "what values to plug into functions.\n<tools>\n{tools}\n</tools>\nFor each function call return a json "
    "object with function name and arguments within <tool_call> </tool_call> tags with the following schema:\n"
    "<tool_call>\n{{'arguments': <args-dict>, 'name': <function-name>}}\n</tool_call>\n"
)


def _call_text(rng: random.Random, call: Call, style: str) -> str:
    if call.broken:
        # A call cut off mid-dict: neither JSON nor a python literal.
        body = repr({"arguments": call.args, "name": call.name})
        return f"<tool_call>\n{body[: max(12, len(body) // 2)]}\n</tool_call>\n"
    if style == "json_name_first":
        body = dumps({"name": call.name, "arguments": call.args})
    else:
        body = repr({"arguments": call.args, "name": call.name})
    if style == "escaped_newlines":
        return f"<tool_call>\\n{body}\\n</tool_call>\\n"
    return f"<tool_call>\n{body}\n</tool_call>\n"


def write(rng: random.Random, case: Case) -> Row:
    tools_json = joined(_TOOLS_JSON, case.tools, lambda f: dumps(openai_tool(f)))
    tools_text = tools_json if rng.random() < 0.1 else joined(_TOOLS_REPR, case.tools, lambda f: repr(openai_tool(f)))
    style = rng.choices(["repr", "json_name_first", "escaped_newlines"], weights=[85, 10, 5])[0]
    newline = "\n" if rng.random() < 0.5 else ""
    conv = [{"from": "system", "value": HERMES_SYSTEM.format(tools=tools_text)}]
    for turn in case.turns:
        if turn.role == "user":
            conv.append({"from": "human", "value": turn.text})
        elif turn.role == "tool":
            value = "".join(f"<tool_response>\n{dumps({'name': n, 'content': r})}\n</tool_response>\n"
                            for n, r in turn.results)
            conv.append({"from": "tool", "value": value})
        elif turn.calls:
            conv.append({"from": "gpt", "value": "".join(_call_text(rng, c, style) for c in turn.calls)})
        else:
            conv.append({"from": "gpt", "value": (turn.text or "") + (newline if turn.text else "")})
    main = next((BY_NAME[c.name] for t in case.turns for c in t.calls if c.name in BY_NAME), case.tools[0])
    row: Row = {"id": random_uuid(rng), "conversations": conv}
    # The hub may or may not carry a ``tools`` column; loaders must fall back to the <tools> block.
    if rng.random() < 0.5:
        row["tools"] = tools_json
    row["category"] = main.domain.en
    row["subcategory"] = main.entity.en.title()
    row["task"] = f"{main.verb.title()} {main.entity.en.title()}"
    return row


# --------------------------------------------------------------------------- normalizer


def _strip_escaped(text: str) -> str:
    # Some rows carry a literal backslash-n (two characters) where a newline was meant.
    text = text.strip()
    while text.startswith("\\n"):
        text = text[2:].lstrip()
    while text.endswith("\\n"):
        text = text[:-2].rstrip()
    return text


# "... function signatures within <tools> </tools> XML tags." describes a format we do not use.
_TAGS_IN_PROSE = re.compile(r"\s*within (?:XML tags )?<tools>\s*</tools>(?: XML tags)?")


def tag_bodies(text: str, open_tag: str, close_tag: str) -> list[str]:
    """Bodies of every complete ``open_tag ... close_tag`` pair, stripped."""
    out = []
    at = text.find(open_tag)
    while at >= 0:
        end = text.find(close_tag, at)
        if end < 0:
            break
        out.append(_strip_escaped(text[at + len(open_tag):end]))
        at = text.find(open_tag, end)
    return out


def tools_block(system: str) -> tuple[int, str] | None:
    """(start, body) of the ``<tools>`` block that holds a list or object.

    The prompt also names the tags in prose ("within <tools> </tools> XML tags") before the block.
    """
    at = system.find("<tools>")
    while at >= 0:
        end = system.find("</tools>", at)
        if end < 0:
            return None
        body = _strip_escaped(system[at + 7:end])
        if body[:1] in ("[", "{"):
            return at, body
        at = system.find("<tools>", at + 7)
    return None


def _calls(value: str, codec: JsonCodec) -> list[tuple[Any, Any]]:
    calls = []
    for body in tag_bodies(value, "<tool_call>", "</tool_call>"):
        try:
            obj = parse_loose(body, codec)
        except ValueError:
            raise Drop("bad_call", "unreadable <tool_call>") from None
        if not isinstance(obj, dict):
            raise Drop("bad_call", "<tool_call> is not an object")
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = parse_loose(args, codec)
            except ValueError:
                raise Drop("bad_call", "arguments string is not JSON") from None
        name = obj.get("name")
        if name is None and isinstance(args, dict) and "name" in args:
            args = dict(args)
            name = args.pop("name")
        calls.append((name, args))
    return calls


def _responses(value: str, codec: JsonCodec) -> list[tuple[Any, str]]:
    bodies = tag_bodies(value, "<tool_response>", "</tool_response>") or [value.strip()]
    out = []
    for body in bodies:
        try:
            obj = parse_loose(body, codec)
        except ValueError:
            out.append((None, body))
            continue
        if isinstance(obj, dict) and "name" in obj and "content" in obj:
            content = obj["content"]
            out.append((obj["name"], content if isinstance(content, str) else codec.dumps(content)))
        else:
            out.append((None, body))
    return out


def _read_system(p: Parsers, system: str) -> tuple[str, ToolSet] | None:
    """(prompt prose, tools) of a system prompt with a ``<tools>`` block; None without one."""
    block = tools_block(system)
    if block is None:
        return None
    # The rest of the prompt teaches the XML call format, which our template replaces.
    start, body = block
    return p.cached(_prose, 256)(system[:start]), p.tool_list(body)


def _prose(_: Parsers, text: str) -> str:
    # Cached per run: the prose before a <tools> block is nearly always the same few prompts.
    return _TAGS_IN_PROSE.sub("", text).strip()


def normalize(row: dict[str, Any], p: Parsers) -> Conversation:
    turns = turns_of(row, "conversations")
    b = ConversationBuilder(p)
    tools = NO_TOOLS
    if isinstance(row.get("tools"), str) and row["tools"].strip():
        tools = p.tools_json(row["tools"])
    for i, turn in enumerate(turns):
        who, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise Drop("empty_turn", "turn value is not text")
        if who == "system":
            parsed = p.cached(_read_system)(value) if i == 0 else None
            if parsed is not None:
                system, block_tools = parsed
                tools = tools if tools.schemas else block_tools
                if system:
                    b.text("system", system)
            elif value.strip():
                b.text("system", value)
        elif who == "human":
            b.text("user", value)
        elif who == "gpt":
            if "<tool_call>" in value:
                b.calls(_calls(value, p.json))
            else:
                b.text("assistant", value)
        elif who == "tool":
            for name, content in _responses(value, p.json):
                b.result(name, content)
        else:
            raise Drop("role_order", f"unknown role {who!r}")
    return b.conversation(tools)
