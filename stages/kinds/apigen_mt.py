"""Salesforce/APIGen-MT-5k (multi-turn agent sessions): its synthetic writer and its normalizer.

Raw schema (the hub's ``apigen-mt_5k.json``, ShareGPT-like): ``{"conversations": [{"from":
"human"|"function_call"|"observation"|"gpt", "value": str}], "tools": str, "system": str}``.
``tools`` is a JSON list of functions (``name``, ``description``, ``parameters``); a
``function_call`` value is a JSON object ``{"name", "arguments"}`` (arguments an object, or a
JSON string of one); an ``observation`` is the result text of the call before it. Consecutive
``function_call`` entries are one assistant step with several calls, answered by the same number
of consecutive observations, in order. ``system`` holds the domain policy (may be empty).

The synthetic rows are sessions against the project's own stateful environments
(``stages/synthetic/environments/``): every result is what the environment returned for the call,
and each session was replayed before it was written.
"""

from __future__ import annotations

import json
import random
from typing import Any

from stages.filter_rules import Drop
from stages.kinds.writing import Row, dumps
from stages.parsing.conversation import Conversation, ConversationBuilder, turns_of
from stages.parsing.literals import parse_loose
from stages.parsing.parsers import Parsers
from stages.parsing.tools import NO_TOOLS
from stages.synthetic.environments.sessions import Session

# Defects a session can carry; each breaks the row the way real data breaks, and the filter must
# drop it under the rule named beside it (tests/test_apigen_mt.py).
SESSION_DEFECTS = {
    "bad_call_syntax": "bad_call",
    "unknown_function": "unknown_tool",
    "invalid_arguments": "invalid_arguments",
    "missing_tool_result": "tool_result_mismatch",
    "wrong_role_order": "role_order",
    "empty_turn": "empty_turn",
}

# --------------------------------------------------------------------------- synthetic writer


def _wrong_type(value: Any) -> Any:
    return 12345 if isinstance(value, str) else "many"


def write(rng: random.Random, session: Session) -> Row:
    conv: list[dict[str, str]] = []
    for turn in session.turns:
        conv.append({"from": "human", "value": turn.user})
        for step in turn.steps:
            for name, args in step.calls:
                conv.append({"from": "function_call", "value": dumps({"name": name, "arguments": args})})
            for result in step.results:
                conv.append({"from": "observation", "value": dumps(result)})
        conv.append({"from": "gpt", "value": turn.answer})
    if session.defect is not None:
        _break(rng, conv, session.defect)
    return {"conversations": conv, "tools": dumps(session.tools), "system": session.system}


def _break(rng: random.Random, conv: list[dict[str, str]], defect: str) -> None:
    calls = [i for i, t in enumerate(conv) if t["from"] == "function_call"]
    if defect == "wrong_role_order":
        # The last answer moved to the front: the session opens with the assistant.
        last = max(i for i, t in enumerate(conv) if t["from"] == "gpt")
        conv.insert(0, conv.pop(last))
    elif defect == "empty_turn":
        humans = [i for i, t in enumerate(conv) if t["from"] == "human"]
        conv[rng.choice(humans)]["value"] = ""
    elif defect == "missing_tool_result":
        # A result that leaves its step's calls unanswered before the next assistant turn (one
        # directly before a text answer would read as two assistant turns in a row instead).
        lost = [i for i, t in enumerate(conv) if t["from"] == "observation"
                and (conv[i - 1]["from"] == "observation" or (i + 1 < len(conv) and conv[i + 1]["from"] != "gpt"))]
        if not lost:
            raise ValueError("missing_tool_result needs a result that is not the last before an answer")
        del conv[rng.choice(lost)]
    else:
        if defect == "invalid_arguments":
            calls = [i for i in calls if json.loads(conv[i]["value"])["arguments"]]
            if not calls:  # the generator draws another session
                raise ValueError("invalid_arguments needs a call with arguments")
        at = rng.choice(calls)
        call = json.loads(conv[at]["value"])
        if defect == "bad_call_syntax":
            text = conv[at]["value"]
            conv[at]["value"] = text[: max(8, len(text) // 2)]
        elif defect == "unknown_function":
            call["name"] = call["name"] + "_v2"
            conv[at]["value"] = dumps(call)
        elif defect == "invalid_arguments":
            args = call["arguments"]
            key = rng.choice(sorted(args))
            args[key] = _wrong_type(args[key])
            conv[at]["value"] = dumps(call)
        else:
            raise ValueError(f"unknown session defect {defect!r}")


# --------------------------------------------------------------------------- normalizer


def _call(value: str, p: Parsers) -> tuple[Any, Any]:
    try:
        obj = parse_loose(value, p.json)
    except ValueError:
        raise Drop("bad_call", "function_call is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise Drop("bad_call", "function_call is not a {name, arguments} object with a text name")
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = parse_loose(args, p.json) if args.strip() else {}
        except ValueError:
            raise Drop("bad_call", "arguments string is not JSON") from None
    return obj["name"], args


def normalize(row: dict[str, Any], p: Parsers) -> Conversation:
    turns = turns_of(row, "conversations")
    tools = NO_TOOLS
    raw_tools = row.get("tools")
    if isinstance(raw_tools, str) and raw_tools.strip():
        tools = p.tools_json(raw_tools)
    elif raw_tools is not None and not isinstance(raw_tools, str):
        raise Drop("unparseable", "'tools' is not a JSON string")
    b = ConversationBuilder(p)
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        b.text("system", system)
    previous = None
    for turn in turns:
        who, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise Drop("empty_turn", "turn value is not text")
        if who == "human":
            b.text("user", value)
        elif who == "gpt":
            b.text("assistant", value)
        elif who == "function_call":
            b.calls([_call(value, p)], merge=previous == "function_call")
        elif who == "observation":
            b.result(None, value)
        else:
            raise Drop("role_order", f"unknown role {who!r}")
        previous = who
    return b.conversation(tools)
