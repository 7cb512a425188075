"""Multi-turn sessions against stateful environments, verified by running them.

A session offers the functions of one or two environments (plus functions of the bank as other
tools a client would send) and holds 2-6 user turns. Each turn is one of:

- ``act``: a request served by a plan: one or more assistant steps of calls (several calls in a
  step when they do not depend on each other; later steps use earlier results), then a text
  answer that closes the turn;
- ``ask``: the request lacks a value a call needs; the assistant asks for it in text, and the
  next turn's reply gives it, then the calls follow;
- ``unavailable``: the request needs a function the session does not offer; the assistant says so
  in text and calls nothing.

Every call is executed in the session's world while the session is built, so tool results and the
state after each turn are what the environment really returns. The finished session is then
replayed from its seed on a fresh world: results and the end state must come out the same. A
session whose plan makes a call the environment refuses, or whose replay differs, is dropped and
counted (:class:`SessionDropped`), never kept.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stages.synthetic.environments.base import Environment, Plan, Request, ToolError

# Relative weights of the turn kinds after the first (the first turn always acts).
TURN_KINDS = {"act": 70, "ask": 18, "unavailable": 12}
# Share of sessions that offer two environments' functions (the rest offer one).
TWO_ENVIRONMENTS = 0.5
# Share of sessions that leave one function of their environment out of the offered tools
# (``unavailable`` turns need one).
WITHHOLD = 0.4

REFUSALS = ("I'm sorry, I can't {does} here: none of the functions I have does that.",
            "None of the available functions can {does}, so I can't do that for you.",
            "I don't have a function to {does}. Is there something else I can help with?")


class SessionDropped(Exception):
    """A generated session that cannot be kept; ``reason`` is its drop counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Step:
    calls: list[tuple[str, dict[str, Any]]]
    results: list[Any]


@dataclass
class SessionTurn:
    user: str
    steps: list[Step]
    answer: str
    kind: str  # "act" | "ask" | "unavailable"


@dataclass
class Session:
    envs: tuple[str, ...]
    seed: str
    system: str
    tools: list[dict[str, Any]]  # functions as offered: {name, description, parameters}
    turns: list[SessionTurn]
    withheld: tuple[str, ...] = ()
    defect: str | None = None  # set on deliberately malformed rows (stages/kinds/apigen_mt.py)
    calls_total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.calls_total = sum(len(s.calls) for t in self.turns for s in t.steps)


class World:
    """The environments of one session: calls go to the environment that defines the function."""

    def __init__(self, classes: Sequence[type[Environment]], seed: str) -> None:
        self.envs = [cls(seed) for cls in classes]
        self.owner = {f.name: env for env in self.envs for f in env.functions()}

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        env = self.owner.get(name)
        if env is None:
            raise ToolError(f"unknown function {name!r}")
        return env.call(name, arguments)

    def result_of(self, name: str, arguments: Any) -> Any:
        """What a client gets back for a call: the result, or ``{"error": ...}`` when it fails."""
        if not isinstance(arguments, dict):
            return {"error": "arguments must be a JSON object"}
        try:
            return self.call(name, arguments)
        except ToolError as exc:
            return {"error": str(exc)}

    def snapshot(self) -> str:
        return json.dumps({e.name: e.state for e in self.envs}, sort_keys=True, ensure_ascii=False)


def world_of(session: Session) -> World:
    from stages.synthetic.environments import environments

    registry = environments()
    return World([registry[name] for name in session.envs], session.seed)


def run_plan(world: World, plan: Plan) -> tuple[list[Step], str]:
    """Drive a plan against ``world``: each yielded step's calls run in order, their results go back."""
    steps: list[Step] = []
    try:
        calls = next(plan)
        while True:
            if not calls:
                raise SessionDropped("empty_step", "a plan yielded no calls")
            try:
                results = [world.call(name, args) for name, args in calls]
            except ToolError as exc:
                raise SessionDropped("call_failed", str(exc)) from None
            steps.append(Step([(n, copy.deepcopy(a)) for n, a in calls], copy.deepcopy(results)))
            calls = plan.send(results)
    except StopIteration as done:
        return steps, str(done.value)
    except SessionDropped:
        raise
    except Exception as exc:  # a plan that cannot go on (a result without what it looked for): counted
        raise SessionDropped("plan_error", f"{type(exc).__name__}: {exc}") from None


def _refusal(rng: random.Random, does: str) -> str:
    return rng.choice(REFUSALS).format(does=does)


def _system(rng: random.Random, classes: Sequence[type[Environment]]) -> str:
    if rng.random() < 0.5:
        return ""
    names = " and the ".join(c.title for c in classes)
    return rng.choice(["You are the assistant of the {n}. Use the functions to act for the user.",
                       "You help users of the {n} through the functions provided."]).format(n=names)


def _offered(rng: random.Random, classes: Sequence[type[Environment]], withheld: set[str], bank: Any,
             functions: tuple[int, int]) -> list[dict[str, Any]]:
    """The environments' functions (minus the withheld one) and bank functions up to the drawn total."""
    from stages.synthetic.function_bank import openai_tool

    own = [f.function() for c in classes for f in c.functions() if f.name not in withheld]
    total = rng.randint(*functions)
    taken = {f["name"] for c in classes for f in (s.function() for s in c.functions())}
    out = list(own)
    related = {d for c in classes for d in c.related_domains}
    pool = [f for f in bank.functions if f.domain.key not in related]
    rng.shuffle(pool)
    for fn in pool:
        if len(out) >= total:
            break
        if fn.name not in taken:
            taken.add(fn.name)
            out.insert(rng.randint(0, len(out)), openai_tool(fn)["function"])
    return out


def _try_request(rng: random.Random, world: World, env: Environment, withheld: set[str], want_withheld: bool,
                 want_partial: bool = False) -> tuple[Request, World, list[Step], str] | None:
    """A request of ``env`` whose plan, run on a copy of the world, calls a withheld function
    (``want_withheld``) or none, and has a variant without one value when ``want_partial``.
    Returns the request, the world after it, its steps and answer."""
    asks = env.requests()
    rng.shuffle(asks)
    for ask in asks:
        trial = copy.deepcopy(world)
        trial_env = trial.envs[world.envs.index(env)]
        request = getattr(trial_env, ask.__name__)(rng)
        if request is None or (want_partial and request.partial is None):
            continue
        steps, answer = run_plan(trial, request.plan)
        used = {name for s in steps for name, _ in s.calls}
        if bool(used & withheld) == want_withheld:
            return request, trial, steps, answer
    return None


def build_session(rng: random.Random, pool: Sequence[type[Environment]], bank: Any, *,
                  functions: tuple[int, int] = (10, 24), turns: tuple[int, int] = (2, 6)) -> Session:
    """One verified session over environments drawn from ``pool``; raises :class:`SessionDropped`.
    ``functions``: how many functions to offer (the environments' own, then bank functions up to a
    number drawn from the range; an environment is never cut); ``turns``: user turns."""
    if not pool:
        raise ValueError("no environments to build a session from")
    count = 2 if len(pool) > 1 and rng.random() < TWO_ENVIRONMENTS else 1
    classes = rng.sample(list(pool), count)
    seed = f"{rng.getrandbits(48):012x}"
    world = World(classes, seed)
    main = world.envs[0]
    withheld: set[str] = set()
    if rng.random() < WITHHOLD:
        withheld.add(rng.choice(sorted(main.function_names())))
    out: list[SessionTurn] = []
    wanted = rng.randint(*turns)
    kinds, weights = list(TURN_KINDS), list(TURN_KINDS.values())
    attempts = 0
    while len(out) < wanted and attempts < wanted * 4:
        attempts += 1
        kind = "act" if not out else rng.choices(kinds, weights=weights)[0]
        env = main if count == 1 or rng.random() < 0.7 else world.envs[1]
        if kind == "unavailable":
            if not withheld or any(t.kind == "unavailable" for t in out):
                continue
            found = _try_request(rng, world, main, withheld, want_withheld=True)
            if found is None:
                continue
            request, _, steps, _ = found
            missing = next(n for s in steps for n, _ in s.calls if n in withheld)
            does = next(f.does for f in main.functions() if f.name == missing)
            out.append(SessionTurn(request.text, [], _refusal(rng, does), "unavailable"))  # the world is unchanged
            continue
        ask = kind == "ask" and len(out) + 2 <= wanted
        found = _try_request(rng, world, env, withheld, want_withheld=False, want_partial=ask)
        if found is None and ask:
            ask, found = False, _try_request(rng, world, env, withheld, want_withheld=False)
        if found is None or any(t.user == found[0].text for t in out):  # the same request twice reads as a loop
            continue
        request, world, steps, answer = found
        main = world.envs[0]
        if ask and request.partial is not None:
            partial, question, reply = request.partial
            out.append(SessionTurn(partial, [], question, "ask"))
            out.append(SessionTurn(reply, steps, answer, "act"))
        else:
            out.append(SessionTurn(request.text, steps, answer, "act"))
    if len(out) < turns[0]:
        raise SessionDropped("too_few_turns", f"{len(out)} turns")
    session = Session(tuple(c.name for c in classes), seed, _system(rng, classes),
                      _offered(rng, classes, withheld, bank, functions), out, tuple(sorted(withheld)))
    replay(session, world.snapshot())
    return session


def replay(session: Session, end_state: str | None = None) -> None:
    """Run every call of ``session`` again on a fresh world from its seed: the results (and the end
    state, when given) must be the recorded ones. Raises :class:`SessionDropped` otherwise."""
    world = world_of(session)
    for turn in session.turns:
        for step in turn.steps:
            try:
                results = [world.call(n, a) for n, a in step.calls]
            except ToolError as exc:
                raise SessionDropped("replay_failed", str(exc)) from None
            if json.dumps(results, sort_keys=True) != json.dumps(step.results, sort_keys=True):
                raise SessionDropped("replay_mismatch", "a result differs on replay")
    if end_state is not None and world.snapshot() != end_state:
        raise SessionDropped("replay_mismatch", "the end state differs on replay")
