"""Function-calling conversations in a neutral form, before any kind's raw schema is applied.

A :class:`Case` is the tools offered plus a list of turns (user text, assistant text, assistant
calls, tool results). The writers render it in a kind's schema. Malformed cases are made here too,
at the level where a defect means something (an unknown function, a missing result), so every
kind carries the same defects in its own syntax.

What each case type teaches (the three decisions a tool-calling model makes):

- whether to call: ``single``/``multiple`` (a tool fits), ``irrelevance`` (a near miss: tools of
  the same domain or the same entity, none of which does what is asked), ``general`` (tools are
  offered, the question needs none), ``missing_info`` (a required value was not given: ask);
- how many calls: ``parallel`` (one function, several values: "in Paris, Lima and Oslo",
  "... respectively"), ``parallel_multiple`` (several functions in one request), all calls of a
  turn in one assistant message;
- what values: requests mention values the way people do, without naming the parameter
  (``phrasing.py``); descriptions carry examples and defaults that a request never repeats, so the
  values must come from the user's words;
- what comes after a result: ``multi_turn`` (a session of several requests, some answered in text)
  and ``chain`` (the second call needs a value from the first call's result).

Every function comes from a :class:`BankView`: training rows use ``TRAIN``, the development
evaluation ``HELDOUT`` (domains that never reach training).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from stages.synthetic.chat import qa
from stages.synthetic.function_bank import BY_NAME, TRAIN, VERBS, BankView, Function
from stages.synthetic.phrasing import can_mention_many, entity_words, join_words, mention, mention_many, spoken

CASE_TYPES = ("single", "parallel", "multiple", "parallel_multiple", "irrelevance", "general", "missing_info",
              "multi_turn", "chain")
# Default mix of case types (relative weights). The balance of call and text decisions is a
# measured choice: see docs/results.md.
CASE_WEIGHTS = (10, 10, 10, 6, 12, 6, 6, 34, 6)

# Defects the filter must catch. ``bad_call_syntax`` is rendered by the writer (each kind breaks
# its own syntax); the others change the conversation itself.
DEFECTS = ("bad_call_syntax", "unknown_function", "invalid_arguments", "missing_tool_result",
           "result_mismatch", "wrong_role_order", "empty_turn")

# Share of English requests that still name each parameter ("the city set to Lima").
NAMED_SHARE = 0.2


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
    # Entities no tool added to the offered list may have: a refusal's wanted entity (a tool of it
    # could do what the user asked, and the refusal would be wrong).
    avoid: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- words


def _fmt(value: Any, zh: bool) -> str:
    if isinstance(value, bool):
        return ("是" if value else "否") if zh else ("yes" if value else "no")
    if isinstance(value, list):
        return ("、" if zh else ", ").join(_fmt(v, zh) for v in value)
    if isinstance(value, dict):
        inner = ("，" if zh else ", ").join(f"{k}{'为' if zh else ': '}{_fmt(v, zh)}" for k, v in value.items())
        return f"（{inner}）" if zh else f"({inner})"
    return str(value)


def named_arguments(rng: random.Random, fn: Function, args: dict[str, Any], zh: bool) -> str:
    """Every argument in words, each after its parameter's name."""
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


# Verb phrases people use for each verb (the first is the description's own).
ACTIONS: dict[str, tuple[str, ...]] = {
    "get": ("get", "look up", "check", "find out"),
    "search": ("search for", "find", "look for"),
    "list": ("list", "show"),
    "create": ("create", "set up", "make"),
    "update": ("update", "change"),
    "cancel": ("cancel", "call off"),
    "check": ("check", "look into"),
    "estimate": ("estimate", "work out"),
    "book": ("book", "reserve"),
    "track": ("track", "follow"),
    "calculate": ("calculate", "work out", "compute", "find"),
    "convert": ("convert",),
}


def action(rng: random.Random, fn: Function, aliases: bool = True) -> str:
    verb = rng.choice(ACTIONS.get(fn.verb, (VERBS[fn.verb][1],)))
    article = "a" if fn.verb in ("search", "create", "book") and rng.random() < 0.5 else "the"
    if fn.verb == "list":
        article = rng.choice(["the", "all"])
    return f"{verb} {article} {entity_words(rng, fn.entity, aliases)}"


def mentions(rng: random.Random, args: dict[str, Any]) -> str:
    items = list(args.items())
    if len(items) > 1 and rng.random() < 0.4:
        head, rest = items[:1], items[1:]
        rng.shuffle(rest)
        items = head + rest
    return " ".join(mention(rng, k, v) for k, v in items)


def clause(rng: random.Random, fn: Function, args: dict[str, Any], aliases: bool = True) -> str:
    """What to do, in a user's words: "book a hotel in Lima for 2 people" (no leading capital)."""
    if rng.random() < NAMED_SHARE and args:
        return f"{fn.request_en} with {named_arguments(rng, fn, args, False)}"
    said = mentions(rng, args)
    return f"{action(rng, fn, aliases)} {said}".rstrip()


_ASK = ("Could you {c}?", "Please {c}.", "I need to {c}.", "Can you {c} for me?", "I'd like to {c}.", "{C}.",
        "Hey, {c}, please.", "I want to {c}.", "Can you help me {c}?")
_QUESTION = ("What's the {e} {m}?", "What is the {e} {m}?", "How's the {e} {m}?", "Tell me the {e} {m}.")


def _sentence(rng: random.Random, text: str) -> str:
    return rng.choice(_ASK).format(c=text, C=text[:1].upper() + text[1:])


def request_text(rng: random.Random, fn: Function, args: dict[str, Any], zh: bool, aliases: bool = True) -> str:
    """A user request that carries every argument value, so the call is grounded in the text.
    ``aliases``: the entity may be named in other words than the tool description's (call
    requests); a near-miss request keeps the entity's own noun (see ``phrasing.ENTITY_ALIASES``)."""
    if zh:
        body = named_arguments(rng, fn, args, zh)
        tail = f"，{body}" if body else ""
        pattern = rng.choice(["请帮我{r}{t}。", "能不能{r}？{t2}", "我想{r}{t}。",
                              "麻烦{r}{t}，谢谢！", "帮忙{r}一下{t}。"])
        return pattern.format(r=fn.request_zh, t=tail, t2=(body + "。") if body else "")
    if fn.verb in ("get", "check", "estimate", "calculate") and args and rng.random() < 0.3:
        return rng.choice(_QUESTION).format(e=entity_words(rng, fn.entity, aliases), m=mentions(rng, args))
    return _sentence(rng, clause(rng, fn, args, aliases))


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


# ----------------------------------------------------------------------------- tools offered


def _other(rng: random.Random, bank: BankView, excluded: list[Function]) -> Function:
    """A random bank function not in ``excluded`` (rejection sampling: the bank is large)."""
    while True:
        fn = rng.choice(bank.functions)
        if fn not in excluded:
            return fn


def _pick_tools(rng: random.Random, bank: BankView, main: list[Function], extra: int) -> list[Function]:
    """The offered tools: the needed ones plus distractors, preferring the same domain."""
    tools = list(dict.fromkeys(main))
    same = [f for f in bank.by_domain[main[0].domain.key] if f not in tools]
    rng.shuffle(same)
    others = [f for f in (rng.choice(bank.functions) for _ in range(extra * 2)) if f not in tools]
    for f in same[: extra // 2 + 1] + others:
        if len(tools) >= len(main) + extra:
            break
        if f not in tools:
            tools.append(f)
    rng.shuffle(tools)
    return tools


def offer_more(rng: random.Random, bank: BankView, tools: list[Function], total: int,
               avoid: tuple[str, ...] = ()) -> list[Function]:
    """``tools`` grown to ``total`` with other functions of the bank, at random places (a client
    that sends its whole tool list). Distractors never share an entity with an offered tool, so no
    second tool does the same thing, nor with the entities in ``avoid``."""
    taken = {f.entity.key for f in tools} | set(avoid)
    pool = [f for f in bank.functions if f.entity.key not in taken]
    rng.shuffle(pool)
    out = list(tools)
    for f in pool:
        if len(out) >= total:
            break
        if f.entity.key not in taken:
            taken.add(f.entity.key)
            out.insert(rng.randint(0, len(out)), f)
    return out


def _execute(rng: random.Random, calls: list[Call], zh: bool) -> tuple[Turn, Turn]:
    results = [(c.name, BY_NAME[c.name].result(rng, c.args, zh)) for c in calls]
    answer = " ".join(answer_text(BY_NAME[n], r, zh) for n, r in results)
    return Turn("tool", results=results), Turn("assistant", text=answer)


def _call(rng: random.Random, fn: Function, zh: bool) -> Call:
    return Call(fn.name, fn.arguments(rng, zh))


# ----------------------------------------------------------------------------- case types


def _distinct_values(rng: random.Random, fn: Function, name: str, first: Any, n: int, zh: bool) -> list[Any]:
    spec = next(p for p in fn.params if p.name == name)
    values = [first]
    for _ in range(n * 6):
        if len(values) == n:
            break
        v = fn.value(rng, spec, zh)
        if v not in values:
            values.append(v)
    return values


def _parallel(rng: random.Random, bank: BankView, fn: Function, zh: bool) -> tuple[list[Call], str]:
    """Several calls of one function from one request: the values that differ are said together."""
    n = rng.randint(2, 4)
    base = fn.arguments(rng, zh)
    varying = [k for k, v in base.items() if can_mention_many(k, v)]
    if zh or not varying or rng.random() < 0.15:
        calls = [Call(fn.name, base)] + [_call(rng, fn, zh) for _ in range(n - 1)]
        if zh:
            parts = "；".join(f"（{i + 1}）{named_arguments(rng, fn, c.args, zh)}" for i, c in enumerate(calls))
            return calls, f"请分别{fn.request_zh}：{parts}。"
        parts = "; ".join(f"({i + 1}) {mentions(rng, c.args) or 'as usual'}" for i, c in enumerate(calls))
        return calls, f"Please {action(rng, fn)} for each of these: {parts}."
    # The parameter a user would naturally list: the function's key parameter when it can vary.
    key = fn.params[0].name
    first = key if key in varying else rng.choice(varying)
    values = _distinct_values(rng, fn, first, base[first], n, zh)
    vary = {first: values}
    others = [k for k in varying if k != first]
    if others and rng.random() < 0.2:  # "... for 2 and 4 people respectively"
        second = rng.choice(others)
        vary[second] = _distinct_values(rng, fn, second, base[second], len(values), zh)
        if len(vary[second]) != len(values):
            del vary[second]
    n = len(values)
    calls = [Call(fn.name, {k: (vary[k][i] if k in vary else v) for k, v in base.items()}) for i in range(n)]
    shared = {k: v for k, v in base.items() if k not in vary}
    listed = " ".join(mention_many(rng, k, vals) for k, vals in vary.items())
    tail = " respectively" if len(vary) > 1 else ""
    style = rng.random()
    if style < 0.7 or len(vary) > 1:
        text = _sentence(rng, f"{action(rng, fn)} {listed} {mentions(rng, shared)}".rstrip() + tail)
    else:  # one value first, the rest after: "Do X for Paris. Then the same for Lima and Oslo."
        one = mention(rng, first, values[0])
        rest = join_words([spoken(first, v, rng) for v in values[1:]])
        text = (_sentence(rng, f"{action(rng, fn)} {one} {mentions(rng, shared)}".rstrip())
                + rng.choice([f" Then do the same for {rest}.", f" Also for {rest}, please.", f" And {rest} too."]))
    return calls, text


def _joined_requests(rng: random.Random, parts: list[str]) -> str:
    if len(parts) == 2 and rng.random() < 0.5:
        return rng.choice(["Could you {a} and {b}?", "Please {a}, and also {b}.", "{A}, then {b}.",
                           "I need two things: {a}, and {b}."]).format(
            a=parts[0], b=parts[1], A=parts[0][:1].upper() + parts[0][1:])
    first = _sentence(rng, parts[0])
    rest = " ".join(rng.choice(["Also, {c}.", "And {c}, please.", "Then {c}.", "After that, {c}."]).format(c=p)
                    for p in parts[1:])
    return f"{first} {rest}"


def _near_miss(rng: random.Random, bank: BankView, zh: bool) -> tuple[Function, list[Function]]:
    """A wanted function and offered tools that look related but cannot do it."""
    for _ in range(50):
        wanted = bank.draw(rng)
        same_domain = [f for f in bank.by_domain[wanted.domain.key] if f.entity is not wanted.entity]
        same_entity = [f for f in bank.by_domain[wanted.domain.key]
                       if f.entity is wanted.entity and f.verb != wanted.verb and f.verb not in ("get", "search")]
        roll = rng.random()
        if roll < 0.5 and same_domain:
            pool = same_domain
        elif roll < 0.75 and same_entity and wanted.verb in ("book", "create", "cancel", "update"):
            pool = same_entity
        else:
            pool = [f for f in bank.functions if f.domain is not wanted.domain]
        tools = rng.sample(pool, min(len(pool), rng.randint(1, 3)))
        # The offered tools must not do the wanted thing under another name.
        if all((t.entity is not wanted.entity) or (t.verb != wanted.verb) for t in tools):
            return wanted, tools
    raise RuntimeError("no near-miss tools found")  # pragma: no cover - the bank is large


def _refusal(rng: random.Random, wanted: Function, tools: list[Function], zh: bool) -> str:
    if zh:
        cover = sorted({t.domain.zh for t in tools})
        return f"抱歉，现有的函数都无法{wanted.request_zh}，它们只涉及{'、'.join(cover)}。"
    can = join_words(sorted({f"{VERBS[t.verb][1]} the {t.entity.en}" for t in tools}))
    return rng.choice([
        "None of the available functions can {want}; the tools I have only {can}.",
        "I can't {want} with the tools available here. I can {can}, if that helps.",
        "Sorry, there's no tool for that: I can only {can}, not {want}.",
        "That isn't something the provided functions support. They let me {can}.",
    ]).format(want=wanted.request_en, can=can)


def _ask_missing(rng: random.Random, fn: Function, missing: str) -> str:
    spec = next(p for p in fn.params if p.name == missing)
    if spec.schema.get("type") == "boolean":
        what = f"whether you want to {spec.phrase_en}"
        return rng.choice([f"To {fn.request_en}, I need to know {what}. Should I?",
                           f"Before I {fn.request_en}: tell me {what}."])
    return rng.choice([f"To {fn.request_en}, I need the {spec.phrase_en}. Could you tell me the {spec.phrase_en}?",
                       f"Sure. Which {spec.phrase_en} should I use?",
                       f"I can do that, but I need the {spec.phrase_en} first. What is it?"])


def _missing_info(rng: random.Random, bank: BankView, zh: bool, execute_p: float) -> Case:
    fn = bank.draw(rng, lambda f: bool(f.required))
    missing = rng.choice(fn.required)
    partial = fn.arguments(rng, zh, omit=missing)
    spec = next(p for p in fn.params if p.name == missing)
    tools = _pick_tools(rng, bank, [fn], rng.randint(0, 2))
    if zh:
        ask = f"要{fn.request_zh}，我还需要知道{spec.phrase_zh}。请告诉我{spec.phrase_zh}。"
    else:
        ask = _ask_missing(rng, fn, missing)
    turns = [Turn("user", request_text(rng, fn, partial, zh)), Turn("assistant", text=ask)]
    if rng.random() < 0.5:
        value = fn.value(rng, spec, zh)
        full = {p.name: (value if p.name == missing else partial[p.name])
                for p in fn.params if p.name == missing or p.name in partial}
        if zh:
            reply = f"{spec.phrase_zh}是{_fmt(value, zh)}。"
        else:
            reply = rng.choice([f"The {spec.phrase_en} is {_fmt(value, zh)}.",
                                f"{mention(rng, missing, value)[:1].upper()}{mention(rng, missing, value)[1:]}.",
                                f"Use {_fmt(value, zh)}."])
        turns += [Turn("user", reply), Turn("assistant", calls=[Call(fn.name, full)])]
        if rng.random() < execute_p:
            turns += list(_execute(rng, turns[-1].calls, zh))
    return Case("missing_info", tools, turns, zh)


# Result fields whose value a later call can take as an argument: result kind -> parameter.
_CHAINABLE = {"title": "title", "person": "person_name", "city": "city", "address": "address"}


def _chain_pairs(bank: BankView) -> list[tuple[Function, str, Function, str]]:
    pairs = []
    for domain_fns in bank.by_domain.values():
        for f1 in domain_fns:
            if f1.verb not in ("search", "list", "get"):
                continue
            for field_name, kind in f1.entity.results:
                param = _CHAINABLE.get(kind)
                for f2 in domain_fns:
                    if f2 is not f1 and param and param in {p.name for p in f2.params}:
                        pairs.append((f1, field_name, f2, param))
    return pairs


_CHAIN_PAIRS: dict[int, list[tuple[Function, str, Function, str]]] = {}


def _chain(rng: random.Random, bank: BankView, zh: bool) -> Case | None:
    pairs = _CHAIN_PAIRS.setdefault(id(bank), _chain_pairs(bank))
    if not pairs:
        return None
    f1, field_name, f2, param = rng.choice(pairs)
    first = _call(rng, f1, zh)
    result = f1.result(rng, first.args, zh)
    item = result["results"][0] if "results" in result else result
    if field_name not in item:
        return None
    linked = item[field_name]
    second_args = f2.arguments(rng, zh)
    second_args[param] = linked
    rest = {k: v for k, v in second_args.items() if k != param}
    if zh:
        tail = f"，{named_arguments(rng, f2, rest, zh)}" if rest else ""
        args1 = named_arguments(rng, f1, first.args, zh)
        text = f"请先{f1.request_zh}{'，' + args1 if args1 else ''}，然后针对第一个结果{f2.request_zh}{tail}。"
    else:
        head = f"{clause(rng, f1, first.args)}, then {action(rng, f2)} for the "
        which = rng.choice(['first one', 'first result', 'top result'])
        text = _sentence(rng, f"{head}{which} {mentions(rng, rest)}".rstrip())
    second = Call(f2.name, second_args)
    turns = [Turn("user", text), Turn("assistant", calls=[first]), Turn("tool", results=[(f1.name, result)]),
             Turn("assistant", calls=[second])]
    turns += list(_execute(rng, [second], zh))
    return Case("chain", _pick_tools(rng, bank, [f1, f2], rng.randint(0, 2)), turns, zh)


# What each round of a session asks (relative weights): the decisions a conversation under one
# set of tools is made of. Several rounds share one tools block, so a training row carries several
# decisions for the tokens of one prompt, and the same tools are seen both fitting and not.
SESSION_ROUNDS = {"call": 34, "parallel": 14, "parallel_multiple": 8, "near_miss": 22, "general": 22}


def _near_miss_for(rng: random.Random, bank: BankView, tools: list[Function]) -> Function:
    """A function whose entity none of ``tools`` serves, preferably of the same domain."""
    offered = {t.entity.key for t in tools}
    same = [f for f in bank.by_domain[tools[0].domain.key] if f.entity.key not in offered]
    pool = same if same and rng.random() < 0.6 else [f for f in bank.functions if f.entity.key not in offered]
    return rng.choice(pool)


def _session(rng: random.Random, bank: BankView, fn: Function, zh: bool, execute_p: float) -> Case:
    """Two to four requests in one conversation under one set of tools, each a decision: a call
    (answered once its result is back), parallel calls, a near miss or a general question (text)."""
    same = [f for f in bank.by_domain[fn.domain.key] if f is not fn]
    tools = _pick_tools(rng, bank, [fn, *rng.sample(same, min(len(same), rng.randint(0, 2)))], rng.randint(0, 1))
    rounds = rng.randint(2, 4)
    kinds = list(SESSION_ROUNDS)
    weights = list(SESSION_ROUNDS.values())
    turns: list[Turn] = []
    for i in range(rounds):
        kind = rng.choices(kinds, weights=weights)[0]
        if zh and kind in ("parallel", "parallel_multiple"):
            kind = "call"
        if kind == "general":
            question, answer = qa(rng, zh)
            turns += [Turn("user", question), Turn("assistant", text=answer)]
            continue
        if kind == "near_miss":
            wanted = _near_miss_for(rng, bank, tools)
            turns += [Turn("user", request_text(rng, wanted, wanted.arguments(rng, zh), zh, aliases=False)),
                      Turn("assistant", text=_refusal(rng, wanted, tools, zh))]
            continue
        f = rng.choice(tools)
        if kind == "parallel":
            calls, text = _parallel(rng, bank, f, zh)
        elif kind == "parallel_multiple" and len(tools) > 1:
            fns = rng.sample(tools, 2)
            calls = [_call(rng, g, zh) for g in fns]
            text = _joined_requests(rng, [clause(rng, g, c.args) for g, c in zip(fns, calls, strict=True)])
        else:
            call = _call(rng, f, zh)
            calls, text = [call], request_text(rng, f, call.args, zh)
        turns += [Turn("user", text), Turn("assistant", calls=calls)]
        # A call must be answered before the conversation goes on; the last may end the row.
        if i < rounds - 1 or rng.random() < execute_p:
            turns += list(_execute(rng, calls, zh))
    return Case("multi_turn", tools, turns, zh)


def make_case(rng: random.Random, case_type: str, zh: bool, execute_p: float, bank: BankView = TRAIN) -> Case:
    fn = bank.draw(rng)
    turns: list[Turn] = []
    if case_type in ("single", "multiple"):
        extra = 0 if case_type == "single" else rng.randint(1, 3)
        tools = _pick_tools(rng, bank, [fn], extra)
        call = _call(rng, fn, zh)
        turns = [Turn("user", request_text(rng, fn, call.args, zh)), Turn("assistant", calls=[call])]
    elif case_type == "parallel":
        calls, text = _parallel(rng, bank, fn, zh)
        tools = _pick_tools(rng, bank, [fn], rng.randint(0, 2))
        turns = [Turn("user", text), Turn("assistant", calls=calls)]
    elif case_type == "parallel_multiple":
        fns = [fn] + rng.sample([f for f in bank.by_domain[fn.domain.key] if f is not fn], 1)
        if rng.random() < 0.4:
            fns.append(_other(rng, bank, fns))
        calls = [_call(rng, f, zh) for f in fns]
        tools = _pick_tools(rng, bank, fns, rng.randint(0, 2))
        if zh:
            text = "我有几件事：" + "；".join(
                f"{'先' if i == 0 else '再'}{f.request_zh}，{named_arguments(rng, f, c.args, zh)}"
                for i, (f, c) in enumerate(zip(fns, calls, strict=True))) + "。"
        else:
            text = _joined_requests(rng, [clause(rng, f, c.args) for f, c in zip(fns, calls, strict=True)])
        turns = [Turn("user", text), Turn("assistant", calls=calls)]
    elif case_type == "irrelevance":
        wanted, tools = _near_miss(rng, bank, zh)
        turns = [Turn("user", request_text(rng, wanted, wanted.arguments(rng, zh), zh, aliases=False)),
                 Turn("assistant", text=_refusal(rng, wanted, tools, zh))]
        return Case(case_type, tools, turns, zh, avoid=(wanted.entity.key,))
    elif case_type == "general":
        tools = _pick_tools(rng, bank, [fn], rng.randint(0, 3))
        question, answer = qa(rng, zh)
        return Case(case_type, tools, [Turn("user", question), Turn("assistant", text=answer)], zh)
    elif case_type == "missing_info":
        return _missing_info(rng, bank, zh, execute_p)
    elif case_type == "chain":
        case = _chain(rng, bank, zh)
        return case if case is not None else _session(rng, bank, fn, zh, execute_p)
    else:  # multi_turn
        return _session(rng, bank, fn, zh, execute_p)
    if rng.random() < execute_p:
        turns += list(_execute(rng, turns[-1].calls, zh))
    return Case(case_type, tools, turns, zh)


def _wrong_value(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind in ("integer", "number"):
        return "many"
    if kind == "boolean":
        return "sometimes"
    if kind == "string":
        return 12345 if "enum" not in schema else "not-an-option"
    return "n/a"


def make_malformed(rng: random.Random, zh: bool, execute_p: float, defects: tuple[str, ...] = DEFECTS,
                   bank: BankView = TRAIN) -> Case:
    """A case with one realistic defect; which one is recorded in ``Case.defect``.

    Defects outside :data:`DEFECTS` (kind-specific ones) leave the conversation alone: the
    kind's writer renders them.
    """
    defect = rng.choice(defects)
    needs_result = defect in ("missing_tool_result", "result_mismatch")
    case_type = rng.choice(["single", "multiple", "parallel_multiple", "multi_turn"])
    while True:  # a session may answer everything in text: the defect needs a call (and its result)
        case = make_case(rng, case_type, zh, 1.0 if needs_result else execute_p, bank)
        if any(t.calls for t in case.turns) and (not needs_result or any(t.role == "tool" for t in case.turns)):
            break
    case.defect = defect
    call_turns = [t for t in case.turns if t.calls]
    call = rng.choice(call_turns[0].calls)
    fn = BY_NAME[call.name]
    if defect == "bad_call_syntax":
        call.broken = True
    elif defect == "unknown_function":
        call.name = _other(rng, bank, case.tools).name
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
        wrong = _other(rng, bank, [BY_NAME[name]]).name
        tool_turn.results[0] = (wrong, result)
    elif defect == "wrong_role_order":
        case.turns[0], case.turns[1] = case.turns[1], case.turns[0]
    elif defect == "empty_turn":
        # The empty assistant turn seen in real ToolACE rows: the user then repeats the request.
        first = case.turns[0]
        case.turns[1:1] = [Turn("assistant", text=""), Turn("user", first.text)]
    return case
