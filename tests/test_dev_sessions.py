"""The development evaluation's multi-turn sessions: held out, played as a client plays them, and
scored per turn the way BFCL scores multi-turn (state equal to the reference, reference results
among the model's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from stages.evaluation.dev import summarize
from stages.evaluation.dev_sessions import MAX_STEPS, REPEATS, build_sessions, play, summarize_sessions
from stages.synthetic.environments import environments


class ScriptedClient:
    """Stands in for the openai client: answers each request with the next scripted answer
    (a list of (name, arguments) calls, or a text)."""

    def __init__(self, answers: Iterator[Any]) -> None:
        self.answers = answers
        self.requests: list[list[dict[str, Any]]] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))
        self.counter = 0

    def create(self, **request: Any) -> Any:
        self.requests.append(json.loads(json.dumps(request["messages"])))
        answer = next(self.answers)
        calls = None
        if not isinstance(answer, str):
            calls = []
            for name, args in answer:
                self.counter += 1
                calls.append(SimpleNamespace(id=f"call_{self.counter}", function=SimpleNamespace(
                    name=name, arguments=json.dumps(args))))
        message = SimpleNamespace(content=answer if isinstance(answer, str) else None, tool_calls=calls)
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")])


def oracle(session: Any) -> Iterator[Any]:
    for turn in session.turns:
        for step in turn.steps:
            yield step.calls
        yield turn.answer


def test_sessions_are_held_out_deterministic_and_varied() -> None:
    first, again = build_sessions(12, 0), build_sessions(12, 0)
    assert [s.to_json() for s in first] == [s.to_json() for s in again]
    assert all(environments()[e].heldout for s in first for e in s.session.envs)
    kinds = {t.kind for s in first for t in s.session.turns}
    assert {"act", "ask"} <= kinds
    assert all(10 <= len(s.session.tools) <= 40 for s in first)


def test_the_reference_answers_pass_every_turn() -> None:
    for dev in build_sessions(6, 1):
        client = ScriptedClient(oracle(dev.session))
        outcome = play(dev, client, "m", 64)
        assert outcome["full"] and outcome["failure"] is None, outcome
        assert all(t["passed"] and t["decision"] for t in outcome["turns"])
        # The client loop: each request carries the whole history, tool results linked by id.
        last = client.requests[-1]
        ids = {c["id"] for m in last if m["role"] == "assistant" and m.get("tool_calls") for c in m["tool_calls"]}
        assert {m["tool_call_id"] for m in last if m["role"] == "tool"} == ids


def _session_with_calls(seed: int = 2) -> Any:
    return next(d for d in build_sessions(10, seed) if d.session.turns[0].steps)


def test_answering_in_text_at_once_is_stopping_early() -> None:
    dev = _session_with_calls()
    outcome = play(dev, ScriptedClient(iter(["Sure."] * 50)), "m", 64)
    assert not outcome["full"] and outcome["failure"] == "stopped_early"
    assert outcome["turns"][0]["decision"] is False


def test_a_call_the_reference_does_not_make_is_a_wrong_function() -> None:
    dev = _session_with_calls()
    other = next(t["name"] for t in dev.session.tools
                 if t["name"] not in {n for s in dev.session.turns[0].steps for n, _ in s.calls})

    def answers() -> Iterator[Any]:
        yield [(other, {})]
        while True:
            yield "Done."

    outcome = play(dev, ScriptedClient(answers()), "m", 64)
    assert outcome["turns"][0]["failure"] == "wrong_function"


def test_a_changed_value_is_a_wrong_value_and_endless_calls_do_not_stop() -> None:
    dev = _session_with_calls()
    first = dev.session.turns[0].steps[0].calls[0]
    changed = {k: (v + "x" if isinstance(v, str) else v) for k, v in first[1].items()}

    def wrong() -> Iterator[Any]:
        yield [(first[0], changed)]
        while True:
            yield "Done."

    outcome = play(dev, ScriptedClient(wrong()), "m", 64)
    assert outcome["turns"][0]["failure"] in ("wrong_value", "stopped_early")
    client = ScriptedClient(iter([[first]] * (MAX_STEPS * 10)))
    looping = play(dev, client, "m", 64)
    assert looping["turns"][0]["failure"] == "did_not_stop"
    assert len(client.requests) >= REPEATS  # the same call again and again ends the turn early

    def varied() -> Iterator[Any]:  # different calls every step: only the step limit ends the turn
        n = 0
        while True:
            n += 1
            yield [(first[0], {**first[1], "_n": n})]

    client = ScriptedClient(varied())
    assert play(dev, client, "m", 64)["turns"][0]["failure"] == "did_not_stop"
    assert len(client.requests) >= MAX_STEPS


def test_summary_reports_full_match_turn_accuracy_and_failures() -> None:
    devs = build_sessions(4, 3)
    played = [play(devs[0], ScriptedClient(oracle(devs[0].session)), "m", 64)]
    played += [play(d, ScriptedClient(iter(["No."] * 60)), "m", 64) for d in devs[1:]]
    summary = summarize_sessions(played)
    assert summary is not None and summary["cases"] == 4 and summary["full_match"] == 0.25
    assert 0 < summary["turn_accuracy"] < 1
    assert set(summary["failures"]) == {"did_not_stop", "wrong_function", "stopped_early", "wrong_value", "error"}
    assert sum(summary["failures"].values()) == 3
    metrics = summarize([], None, summary)
    assert metrics["categories"]["sessions"]["turn_accuracy"] == summary["turn_accuracy"]
    assert metrics["summary"]["sessions_full_match"] == 0.25


def test_a_call_on_a_turn_that_needs_none_fails_and_earlier_results_count() -> None:
    dev = next(d for d in build_sessions(30, 4)
               if any(not t.steps for t in d.session.turns[1:]) and d.session.turns[0].steps)
    quiet = next(i for i, t in enumerate(dev.session.turns) if not t.steps and i > 0)
    lookup = dev.session.turns[0].steps[0].calls[0]

    def answers() -> Iterator[Any]:
        for i, turn in enumerate(dev.session.turns):
            if i == quiet:
                yield [lookup]  # a harmless lookup where the reference calls nothing
            for step in turn.steps:
                yield step.calls
            yield turn.answer

    outcome = play(dev, ScriptedClient(answers()), "m", 64)
    assert outcome["turns"][quiet]["failure"] == "wrong_function"
    assert all(t["passed"] for t in outcome["turns"][:quiet])
