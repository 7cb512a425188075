"""The stateful environments (stages/synthetic/environments/): every registered environment is
checked here, so a new module is covered without a test of its own."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from typing import Any

import jsonschema
import pytest

from stages.synthetic.environments import environments, heldout_environments, training_environments
from stages.synthetic.environments.base import ToolError
from stages.synthetic.environments.sessions import SessionDropped, World, build_session, replay, run_plan, world_of
from stages.synthetic.function_bank import HELDOUT, TRAIN
from stages.synthetic.rng import FastRandom

ENVS = sorted(environments())
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")


def sessions_of(pool: list[Any], bank: Any, n: int, seed: str) -> tuple[list[Any], Counter[str]]:
    rng = FastRandom(seed)
    out, drops = [], Counter()
    for _ in range(n):
        try:
            out.append(build_session(rng, pool, bank))
        except SessionDropped as exc:
            drops[exc.reason] += 1
    return out, drops


def test_registry_has_training_and_heldout_environments() -> None:
    assert len(training_environments()) >= 2 and len(heldout_environments()) >= 1
    names = [f.name for cls in environments().values() for f in cls.functions()]
    assert len(names) == len(set(names)), "function names must be unique across environments"
    bank_names = {f.name for f in TRAIN.functions} | {f.name for f in HELDOUT.functions}
    assert not set(names) & bank_names


@pytest.mark.parametrize("name", ENVS)
def test_functions_are_well_formed(name: str) -> None:
    cls = environments()[name]
    assert cls.title and 5 <= len(cls.functions()) <= 16
    for spec in cls.functions():
        assert NAME_RE.match(spec.name) and spec.description and spec.does
        schema = spec.parameters()
        jsonschema.Draft202012Validator.check_schema(schema)
        for prop in schema["properties"].values():
            assert prop.get("description"), f"{spec.name}: every parameter has a description"


@pytest.mark.parametrize("name", ENVS)
def test_state_is_json_and_seeded(name: str) -> None:
    cls = environments()[name]
    a, b, c = cls("s1"), cls("s1"), cls("s2")
    assert a.snapshot() == b.snapshot() != c.snapshot()
    assert json.loads(a.snapshot()) == a.state


@pytest.mark.parametrize("name", ENVS)
def test_every_request_runs_without_a_refused_call(name: str) -> None:
    """Each ask_* method, on many worlds, either has nothing to do or gives a plan that runs."""
    cls = environments()[name]
    served: Counter[str] = Counter()
    parallel = chained = partial = 0
    for i in range(30):
        world = World([cls], f"w{i}")
        env = world.envs[0]
        rng = FastRandom(f"{name}:{i}")
        for ask in env.requests():
            trial = copy.deepcopy(world)
            request = getattr(trial.envs[0], ask.__name__)(rng)
            if request is None:
                continue
            steps, answer = run_plan(trial, request.plan)  # raises SessionDropped on a refused call
            assert steps and answer and request.text
            served[ask.__name__] += 1
            parallel += any(len(s.calls) > 1 for s in steps)
            chained += len(steps) > 1
            partial += request.partial is not None
    assert set(served) == {a.__name__ for a in cls(name).requests()}, "every request kind is reachable"
    assert len(served) >= 5
    assert parallel and chained and partial, (parallel, chained, partial)


def test_refused_calls_raise_tool_errors() -> None:
    world = World([environments()["library"]], "x")
    with pytest.raises(ToolError, match="unknown function"):
        world.call("no_such_function", {})
    with pytest.raises(ToolError, match="invalid arguments"):
        world.call("get_book", {"book_id": 5})
    with pytest.raises(ToolError, match="invalid arguments"):
        world.call("get_book", {"book_id": "B-101", "extra": 1})
    with pytest.raises(ToolError, match="no book"):
        world.call("get_book", {"book_id": "B-000"})
    assert world.result_of("get_book", {"book_id": "B-000"}) == {"error": "no book with ID B-000"}


def test_sessions_are_verified_and_deterministic() -> None:
    pool = training_environments()
    first, drops = sessions_of(pool, TRAIN, 120, "det")
    again, _ = sessions_of(pool, TRAIN, 120, "det")
    assert [json.dumps(s.__dict__, default=str) for s in first] == [json.dumps(s.__dict__, default=str) for s in again]
    assert sum(drops.values()) <= 0.05 * 120, drops
    kinds = Counter(t.kind for s in first for t in s.turns)
    assert kinds["act"] and kinds["ask"] >= 0.05 * sum(kinds.values()) and kinds["unavailable"], kinds
    for s in first:
        assert 2 <= len(s.turns) <= 6 and 10 <= len(s.tools) <= 40
        offered = {t["name"] for t in s.tools}
        assert not offered & set(s.withheld)
        for turn in s.turns:
            for step in turn.steps:
                assert all(name in offered for name, _ in step.calls)
            if turn.kind != "act":
                assert not turn.steps
        replay(s)  # raises if a result differs
    # Sessions offer tools of more than one environment, and several calls in one step.
    assert any(len(s.envs) == 2 for s in first)
    assert any(len(step.calls) > 1 for s in first for t in s.turns for step in t.steps)


def test_sessions_never_offer_bank_functions_that_do_what_an_environment_does() -> None:
    from stages.synthetic.function_bank import BY_NAME

    sessions, _ = sessions_of(training_environments(), TRAIN, 60, "related")
    sessions += sessions_of(heldout_environments(), HELDOUT, 30, "related")[0]
    assert {d for c in environments().values() for d in c.related_domains} >= {"smart_home", "health"}
    for s in sessions:
        related = {d for e in s.envs for d in environments()[e].related_domains}
        offered = {BY_NAME[t["name"]].domain.key for t in s.tools if t["name"] in BY_NAME}
        assert not offered & related, (s.envs, offered & related)


def test_a_changed_result_fails_the_replay() -> None:
    sessions, _ = sessions_of(training_environments(), TRAIN, 5, "tamper")
    session = next(s for s in sessions if any(t.steps for t in s.turns))
    step = next(st for t in session.turns for st in t.steps)
    step.results[0] = {"tampered": True}
    with pytest.raises(SessionDropped, match="replay_mismatch"):
        replay(session)


def test_heldout_sessions_never_use_training_environments() -> None:
    sessions, _ = sessions_of(heldout_environments(), HELDOUT, 20, "held")
    training_functions = {f.name for c in training_environments() for f in c.functions()}
    train_bank = {f.name for f in TRAIN.functions}
    for s in sessions:
        assert all(environments()[e].heldout for e in s.envs)
        assert not {t["name"] for t in s.tools} & (training_functions | train_bank)
        assert world_of(s).snapshot()
