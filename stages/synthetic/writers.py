"""Render neutral cases into each kind's raw hub schema, quirks included.

One writer per kind. The quirks mirror what the real rows look like (see the schema notes the
team keeps beside its samples): python-repr tool lists and calls in hermes, tools inside the
system prompt with python type names and bracket-list calls in ToolACE, the legacy functions
format with nulls in fc_zh_hard, varying top-level keys in OpenHermes, per-message metadata and
moderation structs in WildChat. Keys are written in the hub's order.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
import zlib
from typing import Any

from stages.synthetic.cases import Call, Case
from stages.synthetic.function_bank import BY_NAME, Function, openai_tool

Row = dict[str, Any]
ChatTurns = list[tuple[str, str]]  # (role "system"|"user"|"assistant", text)


# json.dumps builds a new encoder for every call with non-default options; reuse one.
_dumps = json.JSONEncoder(ensure_ascii=False).encode


def _cached(cache: dict[str, str], fn: Function, render: Any) -> str:
    text = cache.get(fn.name)
    if text is None:
        text = cache[fn.name] = render(fn)
    return text


# Tool lists are most of a row's bytes and the same function is rendered thousands of times:
# render each function once per format. ``"[" + ", ".join(items) + "]"`` is exactly what
# repr()/json.dumps() give for the whole list.
_HERMES_REPR: dict[str, str] = {}
_HERMES_JSON: dict[str, str] = {}
_TOOLACE_JSON: dict[str, str] = {}
_ZH_JSON: dict[str, str] = {}


def _joined(cache: dict[str, str], fns: list[Function], render: Any) -> str:
    return "[" + ", ".join(_cached(cache, f, render) for f in fns) + "]"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# --------------------------------------------------------------------------- hermes_fc

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions about "
    "what values to plug into functions.\n<tools>\n{tools}\n</tools>\nFor each function call return a json "
    "object with function name and arguments within <tool_call> </tool_call> tags with the following schema:\n"
    "<tool_call>\n{{'arguments': <args-dict>, 'name': <function-name>}}\n</tool_call>\n"
)


def _hermes_call(rng: random.Random, call: Call, style: str) -> str:
    if call.broken:
        # A call cut off mid-dict: neither JSON nor a python literal.
        body = repr({"arguments": call.args, "name": call.name})
        return f"<tool_call>\n{body[: max(12, len(body) // 2)]}\n</tool_call>\n"
    if style == "json_name_first":
        body = _dumps({"name": call.name, "arguments": call.args})
    else:
        body = repr({"arguments": call.args, "name": call.name})
    if style == "escaped_newlines":
        return f"<tool_call>\\n{body}\\n</tool_call>\\n"
    return f"<tool_call>\n{body}\n</tool_call>\n"


def write_hermes(rng: random.Random, case: Case) -> Row:
    tools_json = _joined(_HERMES_JSON, case.tools, lambda f: _dumps(openai_tool(f)))
    tools_text = tools_json if rng.random() < 0.1 else _joined(_HERMES_REPR, case.tools, lambda f: repr(openai_tool(f)))
    style = rng.choices(["repr", "json_name_first", "escaped_newlines"], weights=[85, 10, 5])[0]
    newline = "\n" if rng.random() < 0.5 else ""
    conv = [{"from": "system", "value": HERMES_SYSTEM.format(tools=tools_text)}]
    for turn in case.turns:
        if turn.role == "user":
            conv.append({"from": "human", "value": turn.text})
        elif turn.role == "tool":
            value = "".join(f"<tool_response>\n{_dumps({'name': n, 'content': r})}\n</tool_response>\n"
                            for n, r in turn.results)
            conv.append({"from": "tool", "value": value})
        elif turn.calls:
            conv.append({"from": "gpt", "value": "".join(_hermes_call(rng, c, style) for c in turn.calls)})
        else:
            conv.append({"from": "gpt", "value": (turn.text or "") + (newline if turn.text else "")})
    main = next((BY_NAME[c.name] for t in case.turns for c in t.calls if c.name in BY_NAME), case.tools[0])
    row: Row = {"id": _uuid(rng), "conversations": conv}
    # The hub may or may not carry a ``tools`` column; loaders must fall back to the <tools> block.
    if rng.random() < 0.5:
        row["tools"] = tools_json
    row["category"] = main.domain.en
    row["subcategory"] = main.entity.en.title()
    row["task"] = f"{main.verb.title()} {main.entity.en.title()}"
    return row


# --------------------------------------------------------------------------- toolace

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


_TOOLACE_NAMES: dict[str, str] = {}


def toolace_name(fn: Function) -> str:
    """ToolACE names often have spaces or hyphens; pick per function, stable across runs (crc32)."""
    name = _TOOLACE_NAMES.get(fn.name)
    if name is None:
        name = _TOOLACE_NAMES[fn.name] = _toolace_name(fn)
    return name


def _toolace_name(fn: Function) -> str:
    if fn.verb in fn.entity.verbs:  # keep prefix families (get_weather / get_weather_forecast) intact
        return fn.name
    bucket = zlib.crc32(fn.name.encode()) % 10
    words = [fn.verb, *fn.entity.key.split("_")]
    if bucket < 3:
        return " ".join(w.title() for w in words)
    if bucket == 3:
        return "-".join(words)
    return fn.name


def _toolace_schema(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "description" in schema:
        out["description"] = schema["description"]
    out["type"] = PY_TYPES.get(schema.get("type", ""), schema.get("type"))
    for key, value in schema.items():
        if key in ("description", "type"):
            continue
        if key == "properties":
            out[key] = {k: _toolace_schema(v) for k, v in value.items()}
        elif key == "items":
            out[key] = _toolace_schema(value)
        else:
            out[key] = value
    return out


def _toolace_value(value: Any, schema: dict[str, Any], int_as_float: bool) -> str:
    if int_as_float and schema.get("type") == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return f"{float(value)}"
    return _dumps(value)


def _toolace_calls(calls: list[Call], names: dict[str, str], int_as_float: bool) -> str:
    parts = []
    for call in calls:
        fn = BY_NAME.get(call.name)
        props = fn.schema_en["properties"] if fn else {}
        args = ", ".join(f"{k}={_toolace_value(v, props.get(k, {}), int_as_float)}" for k, v in call.args.items())
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


def _write_toolace_foreign(case: Case) -> Row:
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
            conv.append({"from": "tool", "value": _dumps([{"name": n, "results": r} for n, r in turn.results])})
        else:
            conv.append({"from": turn.role, "value": turn.text or ""})
    return {"system": FOREIGN_HEAD + "\n".join(lines) + FOREIGN_TAIL, "conversations": conv}


def write_toolace(rng: random.Random, case: Case) -> Row:
    if case.defect == "foreign_call_format":
        return _write_toolace_foreign(case)
    names = {f.name: toolace_name(f) for f in case.tools}
    for t in case.turns:
        for c in t.calls:
            if c.name in BY_NAME and c.name not in names:
                names[c.name] = toolace_name(BY_NAME[c.name])
    tools_text = _joined(_TOOLACE_JSON, case.tools, lambda f: _dumps(
        {"name": toolace_name(f), "description": f.description,
         "parameters": {**_toolace_schema(f.schema_en), "type": "dict"}, "required": None}))
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
            conv.append({"from": "tool", "value": _dumps(results)})
        elif turn.calls:
            conv.append({"from": "assistant", "value": _toolace_calls(turn.calls, names, int_as_float)})
        else:
            conv.append({"from": "assistant", "value": turn.text or ""})
    row = {"system": system, "conversations": conv}
    if rng.random() < 0.03:
        # The real set went through a global text substitution ("date" -> "string"); it is
        # consistent across schema, calls and results, so such rows stay usable.
        row = {"system": system.replace("date", "string"),
               "conversations": [{"from": t["from"], "value": t["value"].replace("date", "string")} for t in conv]}
    return row


# --------------------------------------------------------------------------- fc_zh_hard

ZH_SYSTEMS = ["你是一个智能助手，可以调用下面提供的函数来完成用户的请求。",
              "你是一个乐于助人的助手。必要时请调用函数，缺少参数时请向用户询问。"]


def _zh_message(content: str | None, function_call: Any = None, name: str | None = None,
                role: str = "user") -> Row:
    return {"content": content, "function_call": function_call, "name": name, "role": role}


def write_fc_zh(rng: random.Random, case: Case) -> Row:
    functions = _joined(_ZH_JSON, case.tools, lambda f: _dumps(
        {"name": f.name, "description": f.description_zh, "parameters": f.parameters(zh=True)}))
    as_struct = rng.random() < 0.1  # the sibling sets store function_call as a struct, not a string
    conv = [_zh_message(rng.choice(ZH_SYSTEMS), role="system")]

    def call_message(call: Call) -> Row:
        arguments = _dumps(call.args)
        if call.broken:
            arguments = arguments[: max(1, len(arguments) // 2)]
        fc: Any = {"arguments": arguments, "name": call.name} if as_struct else _dumps(
            {"name": call.name, "arguments": arguments})
        return _zh_message(None, fc, None, "assistant")

    turns = case.turns
    i = 0
    while i < len(turns):
        turn = turns[i]
        if turn.role == "user":
            conv.append(_zh_message(turn.text))
        elif turn.role == "assistant" and turn.calls:
            nxt = turns[i + 1] if i + 1 < len(turns) and turns[i + 1].role == "tool" else None
            # The legacy format has one call per message; parallel calls alternate with results.
            for j, call in enumerate(turn.calls):
                conv.append(call_message(call))
                if nxt is not None:
                    name, result = nxt.results[j]
                    conv.append(_zh_message(_dumps(result), None, name, "function"))
            if nxt is not None:
                i += 1
        elif turn.role == "assistant":
            conv.append(_zh_message(turn.text or "", role="assistant"))
        i += 1
    return {"functions": functions, "conversation": conv}


# --------------------------------------------------------------------------- openhermes

OPENHERMES_COLUMNS = ("custom_instruction", "topic", "model_name", "model", "skip_prompt_formatting", "category",
                      "conversations", "views", "language", "id", "title", "idx", "hash", "avatarUrl",
                      "system_prompt", "source")
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are an AI assistant. Answer accurately and show your reasoning.",
                  "You are a patient tutor who explains each step."]


def write_openhermes(rng: random.Random, turns: ChatTurns, topic: str) -> Row:
    system_text = rng.choice(SYSTEM_PROMPTS)
    layout = rng.choice(["none", "empty_turn", "turn", "field", "both"])
    conv: list[Row] = []
    if layout in ("empty_turn", "turn", "both"):
        conv.append({"from": "system", "value": "" if layout == "empty_turn" else system_text, "weight": None})
    for role, text in turns:
        conv.append({"from": "human" if role == "user" else "gpt", "value": text,
                     "weight": (1.0 if role == "assistant" and rng.random() < 0.5 else None)})
    profile = rng.randrange(3)
    if profile == 0:  # a row that came through with every column of the union, mostly null
        row: Row = {c: None for c in OPENHERMES_COLUMNS}
        row.update(conversations=conv, source=f"synthetic-{topic}", category=topic,
                   skip_prompt_formatting=False)
    elif profile == 1:
        row = {"conversations": conv, "source": f"synthetic-{topic}", "category": topic}
    else:
        row = {"conversations": conv, "source": f"synthetic-{topic}", "topic": topic.replace("_", " ").title(),
               "idx": _uuid(rng)}
    if layout in ("field", "both"):
        row["system_prompt"] = system_text
    return row


# --------------------------------------------------------------------------- wildchat

MODERATION_KEYS = ("harassment", "harassment/threatening", "harassment_threatening", "hate", "hate/threatening",
                   "hate_threatening", "self-harm", "self-harm/instructions", "self-harm/intent", "self_harm",
                   "self_harm_instructions", "self_harm_intent", "sexual", "sexual/minors", "sexual_minors",
                   "violence", "violence/graphic", "violence_graphic")
DETOXIFY_KEYS = ("identity_attack", "insult", "obscene", "severe_toxicity", "sexual_explicit", "threat", "toxicity")
WILDCHAT_MODELS = ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613", "gpt-4-0314", "gpt-4-1106-preview")
GEO = [("United States", "California"), ("Germany", "Bavaria"), ("China", "Guangdong"), ("India", "Karnataka"),
       ("Brazil", "São Paulo"), ("Canada", "Ontario"), ("France", "Île-de-France")]
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0 Safari/537.36",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 13_3) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/16.4 Safari/605.1.15",
          "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/113.0"]


_NOT_FLAGGED = {k: False for k in MODERATION_KEYS}


def _score_pool(seed: int, keys: tuple[str, ...], scale: float) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{k: round(rng.random() * scale, 8) for k in keys} for _ in range(256)]


# Benign chat scores near zero, drawn from fixed pools: per-key draws for every message were
# most of this kind's generation time.
_OPENAI_SCORES = _score_pool(1, MODERATION_KEYS, 1e-4)
_DETOX_SCORES = _score_pool(2, DETOXIFY_KEYS, 1e-3)


def _moderation(rng: random.Random) -> tuple[Row, Row]:
    bits = rng.getrandbits(16)
    return ({"categories": dict(_NOT_FLAGGED), "category_scores": dict(_OPENAI_SCORES[bits & 0xFF]),
             "flagged": False}, dict(_DETOX_SCORES[bits >> 8]))


def write_wildchat(rng: random.Random, turns: ChatTurns, zh: bool) -> Row:
    country, state = GEO[2] if zh else rng.choice(GEO)
    hashed_ip = f"{rng.getrandbits(256):064x}"
    header = {"accept-language": "zh-CN,zh;q=0.9" if zh else "en-US,en;q=0.9", "user-agent": rng.choice(AGENTS)}
    language = "Chinese" if zh else "English"
    start = dt.datetime(2023, 4, 9, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=rng.randint(0, 400 * 86400))
    clock = start
    first_reply: str | None = None
    conv, openai_mod, detox_mod = [], [], []
    turn_id = rng.randint(10**5, 10**6)
    for role, text in turns:
        clock += dt.timedelta(seconds=rng.randint(5, 120))
        user = role == "user"
        if user:
            turn_id += rng.randint(1, 5000)
        conv.append({"content": text, "country": country if user else None, "hashed_ip": hashed_ip if user else None,
                     "header": header if user else None, "language": language, "redacted": False, "role": role,
                     "state": state if user else None, "timestamp": None if user else clock.isoformat(),
                     "toxic": False, "turn_identifier": turn_id})
        if not user and first_reply is None:
            first_reply = clock.isoformat()
        o, d = _moderation(rng)
        openai_mod.append(o)
        detox_mod.append(d)
    return {"conversation_hash": f"{rng.getrandbits(128):032x}", "model": rng.choice(WILDCHAT_MODELS),
            "timestamp": first_reply or start.isoformat(), "conversation": conv,
            "turn": sum(1 for r, _ in turns if r == "user"), "language": language,
            "openai_moderation": openai_mod, "detoxify_moderation": detox_mod, "toxic": False, "redacted": False,
            "state": state, "country": country, "hashed_ip": hashed_ip, "header": header}
