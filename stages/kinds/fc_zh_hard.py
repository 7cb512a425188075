"""hqfx/fc_zh_hard: its synthetic writer and its normalizer.

Raw schema: ``{"functions": str, "conversation": [{"content", "function_call", "name", "role"}]}``,
OpenAI's legacy functions format in Chinese: ``function_call`` is a JSON string (a struct in the
sibling sets) with the arguments as a JSON string inside, one call per assistant message, results
as ``function`` messages (``name`` set); unused keys are null. Parallel calls are consecutive
assistant messages followed by their results, which the normalizer merges into one assistant turn
with several calls (each result linked to the first open call of its name, else to the next one);
a call, its result, another call and its result stay two turns. No real row has been seen: the
writer follows the parallel form, the normalizer reads both.
"""

from __future__ import annotations

import random
from typing import Any

from stages.filter_rules import Drop
from stages.kinds.writing import Row, dumps, joined
from stages.parsing.conversation import Conversation, ConversationBuilder, turns_of
from stages.parsing.json_codec import JsonCodec
from stages.parsing.literals import parse_loose
from stages.parsing.parsers import Parsers
from stages.parsing.tools import NO_TOOLS, normalize_tools
from stages.synthetic.cases import Call, Case

# --------------------------------------------------------------------------- synthetic writer

# Each function rendered once (see writing.joined).
_TOOLS_JSON: dict[str, str] = {}

ZH_SYSTEMS = ["你是一个智能助手，可以调用下面提供的函数来完成用户的请求。",
              "你是一个乐于助人的助手。必要时请调用函数，缺少参数时请向用户询问。"]


def _message(content: str | None, function_call: Any = None, name: str | None = None, role: str = "user") -> Row:
    return {"content": content, "function_call": function_call, "name": name, "role": role}


def write(rng: random.Random, case: Case) -> Row:
    functions = joined(_TOOLS_JSON, case.tools, lambda f: dumps(
        {"name": f.name, "description": f.description_zh, "parameters": f.parameters(zh=True)}))
    as_struct = rng.random() < 0.1  # the sibling sets store function_call as a struct, not a string
    conv = [_message(rng.choice(ZH_SYSTEMS), role="system")]

    def call_message(call: Call) -> Row:
        arguments = dumps(call.args)
        if call.broken:
            arguments = arguments[: max(1, len(arguments) // 2)]
        fc: Any = {"arguments": arguments, "name": call.name} if as_struct else dumps(
            {"name": call.name, "arguments": arguments})
        return _message(None, fc, None, "assistant")

    turns = case.turns
    i = 0
    while i < len(turns):
        turn = turns[i]
        if turn.role == "user":
            conv.append(_message(turn.text))
        elif turn.role == "assistant" and turn.calls:
            # The legacy format has one call per message: a turn's parallel calls are consecutive
            # assistant messages, then their results, in the calls' order.
            conv.extend(call_message(call) for call in turn.calls)
            if i + 1 < len(turns) and turns[i + 1].role == "tool":
                i += 1
                conv.extend(_message(dumps(result), None, name, "function") for name, result in turns[i].results)
        elif turn.role == "assistant":
            conv.append(_message(turn.text or "", role="assistant"))
        i += 1
    return {"functions": functions, "conversation": conv}


# --------------------------------------------------------------------------- normalizer


def _legacy_call(value: Any, codec: JsonCodec) -> tuple[Any, Any] | None:
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = parse_loose(value, codec)
        except ValueError:
            raise Drop("bad_call", "function_call is not JSON") from None
    if not isinstance(value, dict) or "name" not in value:
        raise Drop("bad_call", "function_call has no name")
    args = value.get("arguments")
    if args is None or args == "":
        args = {}
    if isinstance(args, str):
        try:
            args = parse_loose(args, codec)
        except ValueError:
            raise Drop("bad_call", "function_call arguments are not JSON") from None
    return value["name"], args


def normalize(row: dict[str, Any], p: Parsers) -> Conversation:
    functions = row.get("functions")
    if isinstance(functions, str):
        tools = p.tools_json(functions) if functions.strip() else NO_TOOLS
    elif isinstance(functions, list):
        tools = normalize_tools(functions, p.keep_dots, p.json)
    elif functions is None:
        tools = NO_TOOLS
    else:
        raise Drop("bad_tool_schema", "functions is neither text nor a list")
    b = ConversationBuilder(p)
    for msg in turns_of(row, "conversation"):
        role, content = msg.get("role"), msg.get("content")
        if role == "system":
            if isinstance(content, str) and content.strip():
                b.text("system", content)
        elif role == "user":
            b.text("user", content)
        elif role == "assistant":
            call = _legacy_call(msg.get("function_call"), p.json)
            if call is None:
                b.text("assistant", content)
            else:
                b.calls([call], merge=True)
        elif role in ("function", "tool"):
            b.result(msg.get("name") or None, content if isinstance(content, str) else p.json.dumps(content))
        else:
            raise Drop("role_order", f"unknown role {role!r}")
    return b.conversation(tools)
