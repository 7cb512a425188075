"""Function-calling conversations in a neutral form, before any kind's raw schema is applied.

A :class:`Case` is the tools offered plus a list of turns (user text, assistant text, assistant
calls, tool results). The writers (``writers.py``) render it in a kind's schema. Malformed cases
are made here too, at the level where a defect means something (an unknown function, a missing
result), so every kind carries the same defects in its own syntax.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from stages.synthetic.chat import qa
from stages.synthetic.function_bank import BANK, BY_DOMAIN, BY_NAME, DOMAINS, Function

CASE_TYPES = ("single", "parallel", "multiple", "parallel_multiple", "irrelevance", "missing_info", "multi_turn")
CASE_WEIGHTS = (24, 12, 16, 12, 10, 9, 17)

# Defects the filter must catch. ``bad_call_syntax`` is rendered by the writer (each kind breaks
# its own syntax); the others change the conversation itself.
DEFECTS = ("bad_call_syntax", "unknown_function", "invalid_arguments", "missing_tool_result",
           "result_mismatch", "wrong_role_order", "empty_turn")


@dataclass
class Call:
    name: str
    args: dict[str, Any]
    broken: bool = False  # render with broken syntax (bad JSON / unbalanced brackets)


@dataclass
class Turn:
    role: str  # "user" | "assistant" | "tool"
    text: str | None = None
    calls: list[Call] = field(default_factory=list)
    results: list[tuple[str, Any]] = field(default_factory=list)  # (function name, result)


@dataclass
class Case:
    case_type: str
    tools: list[Function]
    turns: list[Turn]
    zh: bool
    defect: str | None = None


def _fmt(value: Any, zh: bool) -> str:
    if isinstance(value, bool):
        return ("是" if value else "否") if zh else ("yes" if value else "no")
    if isinstance(value, list):
        return ("、" if zh else ", ").join(_fmt(v, zh) for v in value)
    if isinstance(value, dict):
        inner = ("，" if zh else ", ").join(f"{k}{'为' if zh else ': '}{_fmt(v, zh)}" for k, v in value.items())
        return f"（{inner}）" if zh else f"({inner})"
    return str(value)


def _arg_text(rng: random.Random, fn: Function, args: dict[str, Any], zh: bool) -> str:
    """Every argument in words; the phrasing varies so a model cannot key on one template."""
    by_name = {p.name: p for p in fn.params}
    if zh:
        sep = rng.choice(["，", "；"])
        return sep.join(f"{by_name[k].phrase_zh}{rng.choice(['为', '是'])}{_fmt(v, zh)}" for k, v in args.items())
    pattern = rng.choice(["{p} {v}", "{p}: {v}", "the {p} set to {v}"])
    items = []
    for k, v in args.items():
        phrase = by_name[k].phrase_en
        if isinstance(v, bool):  # boolean phrases read as actions: "send a notification"
            items.append(phrase if v else f"don't {phrase}")
        else:
            items.append(pattern.format(p=phrase, v=_fmt(v, zh)))
    if len(items) > 1 and rng.random() < 0.5:
        return ", ".join(items[:-1]) + " and " + items[-1]
    return ", ".join(items)


def request_text(rng: random.Random, fn: Function, args: dict[str, Any], zh: bool) -> str:
    """A user request that states every argument value, so the call is grounded in the text."""
    body = _arg_text(rng, fn, args, zh)
    if zh:
        tail = f"，{body}" if body else ""
        return rng.choice(["请帮我{r}{t}。", "能不能{r}？{t2}", "我想{r}{t}。", "麻烦{r}{t}，谢谢！", "帮忙{r}一下{t}。"]).format(
            r=fn.request_zh, t=tail, t2=(body + "。") if body else "")
    tail = f" with {body}" if body else ""
    template = rng.choice(["Could you {r}{t}?", "Please {r}{t}.", "I need to {r}{t}.", "Hi! Can you {r} for me{t}?",
                           "{R}{t}.", "Can you help me {r}{t}?", "I'd like you to {r}{t}, thanks."])
    return template.format(r=fn.request_en, R=fn.request_en[:1].upper() + fn.request_en[1:], t=tail)


def _words(name: str) -> str:
    return name.replace("_", " ")


def answer_text(fn: Function, result: dict[str, Any], zh: bool) -> str:
    """A final answer that uses the values in the result (so it is consistent with the call)."""
    ent = fn.entity.zh if zh else fn.entity.en
    if "results" in result:
        first = result["results"][0]
        facts = _facts(first, zh)
        if zh:
            return f"共找到{result['total']}条{ent}结果。第一条：{facts}。"
        return f"I found {result['total']} {ent} result(s). The first one: {facts}."
    if result.get("status") == "confirmed":
        return (f"已完成：{ent}已确认，编号为{result['id']}。" if zh
                else f"Done: the {ent} is confirmed with ID {result['id']}.")
    if result.get("status") == "updated":
        return f"{ent}已更新。" if zh else f"The {ent} has been updated."
    if result.get("status") == "cancelled":
        return f"{ent}已取消。" if zh else f"The {ent} has been cancelled."
    facts = _facts({n: result[n] for n, _ in fn.entity.results}, zh)
    return f"{ent}的查询结果：{facts}。" if zh else f"Here is the {ent}: {facts}."


def _facts(fields: dict[str, Any], zh: bool) -> str:
    if zh:
        return "，".join(f"{k}为{_fmt(v, zh)}" for k, v in fields.items())
    return ", ".join(f"{_words(k)} is {_fmt(v, zh)}" for k, v in fields.items())


def _other(rng: random.Random, excluded: list[Function]) -> Function:
    """A random bank function not in ``excluded`` (rejection sampling: the bank is large)."""
    while True:
        fn = rng.choice(BANK)
        if fn not in excluded:
            return fn


def _pick_tools(rng: random.Random, main: list[Function], extra: int) -> list[Function]:
    """The offered tools: the needed ones plus distractors, preferring the same domain."""
    tools = list(dict.fromkeys(main))
    same = [f for f in BY_DOMAIN[main[0].domain.key] if f not in tools]
    rng.shuffle(same)
    others = [f for f in (rng.choice(BANK) for _ in range(extra * 2)) if f not in tools]
    for f in same[: extra // 2 + 1] + others:
        if len(tools) >= len(main) + extra:
            break
        if f not in tools:
            tools.append(f)
    rng.shuffle(tools)
    return tools


def _execute(rng: random.Random, calls: list[Call], zh: bool) -> tuple[Turn, Turn]:
    results = [(c.name, BY_NAME[c.name].result(rng, c.args, zh)) for c in calls]
    answer = " ".join(answer_text(BY_NAME[n], r, zh) for n, r in results)
    return Turn("tool", results=results), Turn("assistant", text=answer)


def _call(rng: random.Random, fn: Function, zh: bool) -> Call:
    return Call(fn.name, fn.arguments(rng, zh))


def make_case(rng: random.Random, case_type: str, zh: bool, execute_p: float) -> Case:
    fn = rng.choice(BANK)
    turns: list[Turn] = []
    if case_type in ("single", "multiple"):
        extra = 0 if case_type == "single" else rng.randint(2, 4)
        tools = _pick_tools(rng, [fn], extra)
        call = _call(rng, fn, zh)
        turns = [Turn("user", request_text(rng, fn, call.args, zh)), Turn("assistant", calls=[call])]
    elif case_type == "parallel":
        calls = [_call(rng, fn, zh) for _ in range(rng.randint(2, 4))]
        tools = _pick_tools(rng, [fn], rng.randint(0, 2))
        if zh:
            parts = "；".join(f"（{i + 1}）{_arg_text(rng, fn, c.args, zh)}" for i, c in enumerate(calls))
            text = f"请分别{fn.request_zh}：{parts}。"
        else:
            parts = "; ".join(f"({i + 1}) {_arg_text(rng, fn, c.args, zh)}" for i, c in enumerate(calls))
            text = f"Please {fn.request_en} for each of these: {parts}."
        turns = [Turn("user", text), Turn("assistant", calls=calls)]
    elif case_type == "parallel_multiple":
        fns = [fn] + rng.sample([f for f in BY_DOMAIN[fn.domain.key] if f is not fn], 1)
        if rng.random() < 0.4:
            fns.append(_other(rng, fns))
        calls = [_call(rng, f, zh) for f in fns]
        tools = _pick_tools(rng, fns, rng.randint(0, 2))
        if zh:
            text = "我有几件事：" + "；".join(f"{'先' if i == 0 else '再'}{f.request_zh}，{_arg_text(rng, f, c.args, zh)}"
                                         for i, (f, c) in enumerate(zip(fns, calls))) + "。"
        else:
            text = f"I have {len(fns)} requests. " + " ".join(
                f"{'First' if i == 0 else 'Also'}, {f.request_en} with {_arg_text(rng, f, c.args, zh)}."
                for i, (f, c) in enumerate(zip(fns, calls)))
        turns = [Turn("user", text), Turn("assistant", calls=calls)]
    elif case_type == "irrelevance":
        other = rng.choice([d for d in DOMAINS if d is not fn.domain])
        wanted = rng.choice(BY_DOMAIN[other.key])
        tools = _pick_tools(rng, [fn], rng.randint(0, 3))
        tools = [t for t in tools if t.domain is not other] or [fn]
        cover = sorted({(t.domain.zh if zh else t.domain.en.lower()) for t in tools})
        if zh:
            answer = f"抱歉，现有的函数都无法{wanted.request_zh}，它们只涉及{'、'.join(cover)}。"
        else:
            answer = (f"None of the available functions can {wanted.request_en}; "
                      f"the tools I have only cover {', '.join(cover)}.")
        turns = [Turn("user", request_text(rng, wanted, wanted.arguments(rng, zh), zh)),
                 Turn("assistant", text=answer)]
        return Case(case_type, tools, turns, zh)
    elif case_type == "missing_info":
        fn = rng.choice(_WITH_REQUIRED)
        missing = rng.choice(fn.required)
        partial = fn.arguments(rng, zh, omit=missing)
        phrase = next(p for p in fn.params if p.name == missing)
        tools = _pick_tools(rng, [fn], rng.randint(0, 2))
        if zh:
            ask = f"要{fn.request_zh}，我还需要知道{phrase.phrase_zh}。请告诉我{phrase.phrase_zh}。"
        else:
            ask = f"To {fn.request_en}, I need the {phrase.phrase_en}. Could you tell me the {phrase.phrase_en}?"
        turns = [Turn("user", request_text(rng, fn, partial, zh)), Turn("assistant", text=ask)]
        if rng.random() < 0.5:
            value = phrase.value(rng, zh)
            full = {p.name: (value if p.name == missing else partial[p.name])
                    for p in fn.params if p.name == missing or p.name in partial}
            reply = (f"{phrase.phrase_zh}是{_fmt(value, zh)}。" if zh
                     else f"The {phrase.phrase_en} is {_fmt(value, zh)}.")
            turns += [Turn("user", reply), Turn("assistant", calls=[Call(fn.name, full)])]
            if rng.random() < execute_p:
                turns += list(_execute(rng, turns[-1].calls, zh))
        return Case(case_type, tools, turns, zh)
    else:  # multi_turn: two rounds of call, result and answer
        second = rng.choice([f for f in BY_DOMAIN[fn.domain.key] if f is not fn])
        tools = _pick_tools(rng, [fn, second], rng.randint(0, 2))
        for i, f in enumerate((fn, second)):
            if i == 1 and rng.random() < 0.3:
                # Real multi-turn rows drift into small talk between tool uses; the answer is
                # computed, so it is still correct.
                question, answer = qa(rng, zh)
                turns += [Turn("user", question), Turn("assistant", text=answer)]
            call = _call(rng, f, zh)
            turns += [Turn("user", request_text(rng, f, call.args, zh)), Turn("assistant", calls=[call])]
            turns += list(_execute(rng, [call], zh))
        return Case(case_type, tools, turns, zh)
    if rng.random() < execute_p:
        turns += list(_execute(rng, turns[-1].calls, zh))
    return Case(case_type, tools, turns, zh)


_WITH_REQUIRED = [f for f in BANK if f.required]


def _wrong_value(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind in ("integer", "number"):
        return "many"
    if kind == "boolean":
        return "sometimes"
    if kind == "string":
        return 12345 if "enum" not in schema else "not-an-option"
    return "n/a"


def make_malformed(rng: random.Random, zh: bool, execute_p: float, defects: tuple[str, ...] = DEFECTS) -> Case:
    """A case with one realistic defect; which one is recorded in ``Case.defect``.

    Defects outside :data:`DEFECTS` (kind-specific ones) leave the conversation alone: the
    kind's writer renders them.
    """
    defect = rng.choice(defects)
    needs_result = defect in ("missing_tool_result", "result_mismatch")
    case_type = rng.choice(["single", "multiple", "parallel_multiple", "multi_turn"])
    case = make_case(rng, case_type, zh, 1.0 if needs_result else execute_p)
    case.defect = defect
    call_turns = [t for t in case.turns if t.calls]
    call = rng.choice(call_turns[0].calls)
    fn = BY_NAME[call.name]
    if defect == "bad_call_syntax":
        call.broken = True
    elif defect == "unknown_function":
        call.name = _other(rng, case.tools).name
    elif defect == "invalid_arguments":
        if fn.required and rng.random() < 0.5:
            call.args.pop(rng.choice(fn.required), None)
        else:
            p = rng.choice(fn.params)
            call.args[p.name] = _wrong_value(p.schema)
    elif defect == "missing_tool_result":
        idx = next(i for i, t in enumerate(case.turns) if t.role == "tool")
        del case.turns[idx]
    elif defect == "result_mismatch":
        tool_turn = next(t for t in case.turns if t.role == "tool")
        name, result = tool_turn.results[0]
        wrong = _other(rng, [BY_NAME[name]]).name
        tool_turn.results[0] = (wrong, result)
    elif defect == "wrong_role_order":
        case.turns[0], case.turns[1] = case.turns[1], case.turns[0]
    elif defect == "empty_turn":
        # The empty assistant turn seen in real ToolACE rows: the user then repeats the request.
        first = case.turns[0]
        case.turns[1:1] = [Turn("assistant", text=""), Turn("user", first.text)]
    return case
