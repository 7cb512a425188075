"""Team-ACE/ToolACE: its synthetic writer and its normalizer.

Raw schema: ``{"system": str, "conversations": [{"from": "user"|"assistant"|"tool", "value": str}]}``.
The tools are a JSON list inside the system prompt (python type names, a stray ``"required":
null``); calls are python-like bracket lists (``[Name(arg="x", n=2.0)]``, see
``stages/parsing/call_list.py``); a tool turn is a JSON list of ``{"name", "results"}``. About 4%
of real rows list tools as free text with a call syntax of their own: dropped as
``unsupported_tool_format``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import zlib
from typing import Any

from stages.filter_rules import Drop
from stages.kinds.writing import Row, dumps, joined
from stages.parsing.call_list import parse_call_list, starts_with_calls, trailing_call_list
from stages.parsing.conversation import Conversation, ConversationBuilder, turns_of
from stages.parsing.json_codec import JsonCodec
from stages.parsing.parsers import Parsers
from stages.parsing.tools import ToolSet
from stages.synthetic.cases import Call, Case
from stages.synthetic.function_bank import BY_NAME, Function

# --------------------------------------------------------------------------- synthetic writer

# Each function rendered once (see writing.joined).
_TOOLS_JSON: dict[str, str] = {}

TOOLACE_HEAD = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. \n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. \n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required by "
    "the function,\nalso point it out.{extra}\n{time}Here is a list of functions in JSON format that you can invoke:\n"
)
TOOLACE_TAIL = (
    ". \nShould you decide to return the function call(s). \nPut it in the format of [func1(params_name=params_value, "
    "params_name2=params_value2...), func2(params)]\n\nNO other text MUST be included. \n"
)
JAVA_NOTE = "\n\n Note that the provided function is in Java 8 SDK syntax or JavaScript."
ROLE_WRAP = (
    "Role definition:\n Inquirer: A user who raises an inquiry.\n Response assistant: Communicates with the "
    "inquirer and provides answers and solutions.\n\n Historical dialog data is as follows:\nInquirer: {text}\n\n "
    "Please continue your answer given the historical dialog. Your role is the Response assistant."
)
PY_TYPES = {"string": "string", "integer": "int", "number": "float", "boolean": "boolean", "array": "array",
            "object": "dict"}


_NAMES: dict[str, str] = {}


def toolace_name(fn: Function) -> str:
    """ToolACE names often have spaces or hyphens; pick per function, stable across runs (crc32)."""
    name = _NAMES.get(fn.name)
    if name is None:
        name = _NAMES[fn.name] = _pick_name(fn)
    return name


def _pick_name(fn: Function) -> str:
    if fn.verb in fn.entity.verbs:  # keep prefix families (get_weather / get_weather_forecast) intact
        return fn.name
    bucket = zlib.crc32(fn.name.encode()) % 10
    words = [fn.verb, *fn.entity.key.split("_")]
    if bucket < 3:
        return " ".join(w.title() for w in words)
    if bucket == 3:
        return "-".join(words)
    return fn.name


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "description" in schema:
        out["description"] = schema["description"]
    out["type"] = PY_TYPES.get(schema.get("type", ""), schema.get("type"))
    for key, value in schema.items():
        if key in ("description", "type"):
            continue
        if key == "properties":
            out[key] = {k: _schema(v) for k, v in value.items()}
        elif key == "items":
            out[key] = _schema(value)
        else:
            out[key] = value
    return out


def _value(value: Any, schema: dict[str, Any], int_as_float: bool) -> str:
    if int_as_float and schema.get("type") == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return f"{float(value)}"
    return dumps(value)


def _calls_text(calls: list[Call], names: dict[str, str], int_as_float: bool) -> str:
    parts = []
    for call in calls:
        fn = BY_NAME.get(call.name)
        props = fn.schema_en["properties"] if fn else {}
        args = ", ".join(f"{k}={_value(v, props.get(k, {}), int_as_float)}" for k, v in call.args.items())
        text = f"{names.get(call.name, call.name)}({args})"
        if call.broken:
            text = text[: max(len(text) - 1 - len(args) // 2, len(call.name) + 2)]  # unbalanced: cut mid-args
        parts.append(text)
    return "[" + ", ".join(parts) + ("" if any(c.broken for c in calls) else "]")


FOREIGN_HEAD = (
    "You are an intelligent assistant that helps the user by calling tools when needed.\n"
    "Here are the tools you can use:\n"
)
FOREIGN_TAIL = (
    "\nPlease use the following format to call the tool:\nWhen there is only one API request, the API request "
    "should be output in the format of (api_Name=>['param_name1'--'value_1', 'param_name2'--'value_2', ...]). "
    "When there are multiple API requests, they should be separated by commas.\n"
    "Do not include parameters not mentioned by the user or not present in the historical conversation."
)


def _write_foreign(case: Case) -> Row:
    """The ~4% of real ToolACE rows that list tools as text and define their own call syntax."""
    lines = []
    for f in case.tools:
        params = ", ".join(f"{p.name} ({p.schema['type']})" for p in f.params)
        lines.append(f"- {toolace_name(f)}: {f.description} Parameters: {params or 'none'}")
    conv = []
    for turn in case.turns:
        if turn.calls:
            calls = ", ".join(
                f"{toolace_name(BY_NAME[c.name]) if c.name in BY_NAME else c.name}=>["
                + ", ".join(f"{k!r}--{v!r}" for k, v in c.args.items()) + "]" for c in turn.calls)
            conv.append({"from": "assistant", "value": f"({calls})"})
        elif turn.role == "tool":
            conv.append({"from": "tool", "value": dumps([{"name": n, "results": r} for n, r in turn.results])})
        else:
            conv.append({"from": turn.role, "value": turn.text or ""})
    return {"system": FOREIGN_HEAD + "\n".join(lines) + FOREIGN_TAIL, "conversations": conv}


def write(rng: random.Random, case: Case) -> Row:
    if case.defect == "foreign_call_format":
        return _write_foreign(case)
    names = {f.name: toolace_name(f) for f in case.tools}
    for t in case.turns:
        for c in t.calls:
            if c.name in BY_NAME and c.name not in names:
                names[c.name] = toolace_name(BY_NAME[c.name])
    tools_text = joined(_TOOLS_JSON, case.tools, lambda f: dumps(
        {"name": toolace_name(f), "description": f.description,
         "parameters": {**_schema(f.schema_en), "type": "dict"}, "required": None}))
    variant = rng.random()
    extra = " You should only return the function call in tools call sections." if variant < 0.15 else ""
    when = ""
    if 0.15 <= variant < 0.45:
        moment = dt.datetime(2020, 1, 1) + dt.timedelta(seconds=rng.randint(0, 6 * 365 * 86400))
        when = f"The current time is {moment:%Y-%m-%d %H:%M:%S}."
    system = TOOLACE_HEAD.format(extra=extra, time=when) + tools_text + TOOLACE_TAIL
    if rng.random() < 0.03:
        system += JAVA_NOTE
    int_as_float = rng.random() < 0.3
    conv = []
    for i, turn in enumerate(case.turns):
        if turn.role == "user":
            text = turn.text or ""
            if i == 0 and rng.random() < 0.05:
                text = ROLE_WRAP.format(text=text)
            conv.append({"from": "user", "value": text})
        elif turn.role == "tool":
            results = [{"name": names.get(n, toolace_name(BY_NAME[n]) if n in BY_NAME else n), "results": r}
                       for n, r in turn.results]
            conv.append({"from": "tool", "value": dumps(results)})
        elif turn.calls:
            conv.append({"from": "assistant", "value": _calls_text(turn.calls, names, int_as_float)})
        else:
            conv.append({"from": "assistant", "value": turn.text or ""})
    row = {"system": system, "conversations": conv}
    if rng.random() < 0.03:
        # The real set went through a global text substitution ("date" -> "string"); it is
        # consistent across schema, calls and results, so such rows stay usable.
        row = {"system": system.replace("date", "string"),
               "conversations": [{"from": t["from"], "value": t["value"].replace("date", "string")} for t in conv]}
    return row


# --------------------------------------------------------------------------- normalizer

_JSON = json.JSONDecoder()
# The sentence that introduces the JSON tool list, in the English and the Chinese prompts.
_TOOLS_MARKS = ("Here is a list of functions in JSON format that you can invoke:",
                "以下是可以调用的工具的JSON格式列表:", "以下是可以调用的工具的JSON格式列表：")
_AFTER_LIST = ". \nShould you decide"
# Lines that teach ToolACE's own call syntax, which the project's template replaces: its example
# call ("[func1(params_name=...)", "[func_name1(...)"), and the sentences around it.
_CALL_FORMAT_LINE = re.compile(r"\[\s*func(?:_name)?1\s*\(|Should you decide to return the function call"
                               r"|NO other text MUST be included|包含(?:任何)?其他(?:文本|内容)")


def _without_call_format(text: str) -> str:
    """``text`` less the lines that teach ToolACE's call syntax, stripped."""
    # Each alternative of _CALL_FORMAT_LINE holds one of these: without them (most prompt heads)
    # the regex, which has no literal prefix to search for, need not scan the text.
    if (("[" not in text and "Should you decide" not in text and "NO other text" not in text
         and "其他" not in text) or _CALL_FORMAT_LINE.search(text) is None):
        return text.strip()
    return "\n".join(line for line in text.splitlines() if _CALL_FORMAT_LINE.search(line) is None).strip()


def _prompt(head: str, tail: str) -> str:
    """The system prompt without its tool list: the text before the list, and whatever follows it
    once the call-syntax instructions are gone (a note such as "Note that the provided function is
    in Java 8 SDK syntax or JavaScript.")."""
    if tail.startswith(TOOLACE_TAIL):
        tail = tail[len(TOOLACE_TAIL):]
    else:
        tail = tail.lstrip()
        tail = tail[1:] if tail.startswith(("。", ".")) else tail  # the list is closed by a full stop
    parts = [part for part in (_without_call_format(head), _without_call_format(tail)) if part]
    return "\n\n".join(parts)


def _read_system(p: Parsers, system: str) -> tuple[str, ToolSet]:
    """(the prompt without the tool list, tools); cached per run, as prompts repeat across rows."""
    for marker in _TOOLS_MARKS:
        at = system.find(marker)
        if at >= 0:
            break
    start = system.find("[", at) if at >= 0 else -1
    if start < 0:
        raise Drop("unsupported_tool_format", "no JSON function list in the system prompt")
    # Usual layout: the list ends right before this sentence. If every piece up to it reads as a
    # JSON object, that slice is the list raw_decode would find, without decoding it whole.
    mark = system.find(_AFTER_LIST, start)
    if mark > start and system[mark - 1] == "]":
        fast = p.tool_list_in_pieces(system[start:mark])
        if fast is not None:
            return _prompt(system[:at], system[mark:]), fast
    try:
        _, end = _JSON.raw_decode(system, start)
    except ValueError:
        raise Drop("unsupported_tool_format", "function list is not JSON") from None
    return _prompt(system[:at], system[end:]), p.tool_list(system[start:end])


def _calls(value: str, codec: JsonCodec,
           names: tuple[str, ...]) -> tuple[str | None, list[tuple[str, dict[str, Any]]]] | None:
    """(prose before the calls or None, the calls) of an assistant turn, or None for a plain answer.

    A turn that starts like a call list must read as one (else ``bad_call``); a turn of prose that
    ends with a list of calls to offered tools keeps both (the template renders the calls).
    """
    if starts_with_calls(value, names):
        try:
            return None, parse_call_list(value, codec, names)
        except (ValueError, SyntaxError, RecursionError):
            raise Drop("bad_call", "unreadable call list") from None
    at = trailing_call_list(value, names)
    if at is None:
        return None
    return value[:at].strip() or None, parse_call_list(value[at:], codec, names)


def _results(value: str, codec: JsonCodec) -> list[tuple[Any, str]] | None:
    try:
        obj = codec.loads(value)
    except ValueError:
        return None
    if not isinstance(obj, list) or not all(isinstance(o, dict) and "name" in o for o in obj):
        return None
    return [(o["name"], codec.dumps(o.get("results"))) for o in obj]


def normalize(row: dict[str, Any], p: Parsers) -> Conversation:
    system = row.get("system")
    if not isinstance(system, str):
        raise Drop("unparseable", "system is not text")
    prompt, tools = p.cached(_read_system)(system)
    b = ConversationBuilder(p)
    if prompt:
        b.text("system", prompt)
    for turn in turns_of(row, "conversations"):
        who, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise Drop("empty_turn", "turn value is not text")
        if who == "user":
            b.text("user", value)
        elif who == "assistant":
            found = _calls(value, p.json, tools.originals)
            if found is None:
                b.text("assistant", value)
            else:
                prose, calls = found
                b.calls(calls, content=prose)
        elif who == "tool":
            results = _results(value, p.json)
            if results is None:
                b.result(None, value)
            else:
                for name, content in results:
                    b.result(name, content)
        else:
            raise Drop("role_order", f"unknown role {who!r}")
    return b.conversation(tools)
