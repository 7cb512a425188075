"""The development evaluation's ``sessions`` category: multi-turn sessions against held-out
stateful environments, run the way a client runs them and scored the way BFCL scores multi-turn.

Each session (``stages/synthetic/environments/``, held-out environments only, which never reach
training) is played through the server turn by turn: the user's turn is sent; while the model
answers with calls, each call is executed in the model's own world and its result sent back;
the turn ends when the model answers in text, or fails after 20 steps (or once it has made the
same call with the same arguments 4 steps in a row: a loop). After each turn the model's world is
compared with a reference world that ran the session's reference calls:

- state: the two worlds' data must be equal;
- results: every result of the turn's reference calls must be among the results the model's calls
  have produced so far in the session;
- a turn whose reference makes no call (the request lacks a value, or needs a function that is not
  offered) passes only if the model makes no call either.

A turn passes when these hold; a session is fully right when every turn passes (``full_match``);
``turn_accuracy`` is the share of turns that pass. The history goes on from what the model did,
so a wrong turn usually makes later turns wrong too, as in BFCL. A failed session counts under the
reason of its first failed turn: ``did_not_stop`` (20 steps, or calls until the conversation no
longer fits the context), ``wrong_function`` (a function the reference does not call, or any call
on a turn that needs none), ``stopped_early`` (a reference function never called: it answered
before finishing), ``wrong_value`` (the right functions, but another state or result), ``error``
(the server refused the request). ``decision_accuracy``: turns whose first answer is a call
exactly when the reference calls.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CATEGORY = "sessions"
MAX_STEPS = 20
# A turn also ends as did_not_stop when the model makes the same call (name and arguments) this many
# steps in a row: a greedy model whose identical call keeps getting the identical result is in a
# loop, and the remaining steps would only cost evaluation time.
REPEATS = 4
FAILURES = ("did_not_stop", "wrong_function", "stopped_early", "wrong_value", "error")
TEXT_STOPS = [". ", ".\n"]


@dataclass
class DevSession:
    id: str
    session: Any  # stages.synthetic.environments.sessions.Session

    def to_json(self) -> dict[str, Any]:
        s = self.session
        return {"id": self.id, "category": CATEGORY, "envs": list(s.envs), "seed": s.seed, "system": s.system,
                "tools": [{"type": "function", "function": t} for t in s.tools],
                "turns": [{"user": t.user, "kind": t.kind, "reference_calls": [
                    [{"name": n, "arguments": a} for n, a in step.calls] for step in t.steps], "answer": t.answer}
                    for t in s.turns]}


def build_sessions(n: int, seed: int) -> list[DevSession]:
    """``n`` sessions of the held-out environments; same arguments, same sessions."""
    from stages.synthetic.environments import heldout_environments
    from stages.synthetic.environments.sessions import SessionDropped, build_session
    from stages.synthetic.function_bank import HELDOUT
    from stages.synthetic.rng import FastRandom

    rng = FastRandom(f"dev:{CATEGORY}:{seed}")
    out: list[DevSession] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > n * 20:
            raise RuntimeError(f"could not build {n} development sessions")
        try:
            session = build_session(rng, heldout_environments(), HELDOUT)
        except SessionDropped:
            continue
        out.append(DevSession(f"{CATEGORY}_{len(out)}", session))
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _ask(client: Any, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
         max_tokens: int) -> dict[str, Any]:
    import openai

    try:
        resp = client.chat.completions.create(model=model, messages=messages, tools=tools, temperature=0.0,
                                              max_tokens=max_tokens, seed=0, stop=TEXT_STOPS)
    except openai.APIError as exc:
        return {"error": str(exc)[:300]}
    message = resp.choices[0].message
    calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
    return {"content": message.content, "calls": calls, "finish": resp.choices[0].finish_reason}


def play(dev: DevSession, client: Any, model: str, max_tokens: int) -> dict[str, Any]:
    """Play one session through the server; the per-turn outcomes and the session's verdict."""
    from stages.synthetic.environments.sessions import world_of

    session = dev.session
    mine, reference = world_of(session), world_of(session)
    tools = [{"type": "function", "function": t} for t in session.tools]
    messages: list[dict[str, Any]] = [{"role": "system", "content": session.system}] if session.system else []
    turns = []
    results: list[str] = []  # every result the model's calls produced so far, as BFCL keeps them
    for turn in session.turns:
        messages.append({"role": "user", "content": turn.user})
        called: list[str] = []
        first_is_call = None
        outcome = None
        previous, repeats = None, 0
        for _ in range(MAX_STEPS):
            answer = _ask(client, model, messages, tools, max_tokens)
            if "error" in answer:
                # A conversation grown past the context by endless calls did not stop.
                outcome = "did_not_stop" if "context_length_exceeded" in answer["error"] else "error"
                break
            if first_is_call is None:
                first_is_call = bool(answer["calls"])
            if not answer["calls"]:
                messages.append({"role": "assistant", "content": answer["content"] or ""})
                break
            step_calls = [(c["name"], c["arguments"]) for c in answer["calls"]]
            repeats = repeats + 1 if step_calls == previous else 1
            previous = step_calls
            if repeats >= REPEATS:
                outcome = "did_not_stop"
                break
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in answer["calls"]]})
            for call in answer["calls"]:
                try:
                    arguments = json.loads(call["arguments"])
                except json.JSONDecodeError:
                    arguments = None
                result = mine.result_of(call["name"], arguments)
                called.append(call["name"])
                results.append(_canonical(result))
                messages.append({"role": "tool", "tool_call_id": call["id"],
                                 "content": json.dumps(result, ensure_ascii=False)})
        else:
            outcome = "did_not_stop"
        wanted: list[str] = []
        wanted_names: list[str] = []
        for step in turn.steps:
            for name, arguments in step.calls:
                wanted.append(_canonical(reference.call(name, arguments)))
                wanted_names.append(name)
        pool = Counter(results)
        results_ok = all(pool[r] >= n for r, n in Counter(wanted).items())
        state_ok = mine.snapshot() == reference.snapshot()
        if outcome is None and not wanted_names and called:
            outcome = "wrong_function"  # BFCL fails any call on a turn whose reference makes none
        if outcome is None and not (state_ok and results_ok):
            if set(called) - set(wanted_names):
                outcome = "wrong_function"
            elif set(wanted_names) - set(called):
                outcome = "stopped_early"
            else:
                outcome = "wrong_value"
        turns.append({"kind": turn.kind, "passed": outcome is None, "failure": outcome, "calls": called,
                      "reference_calls": wanted_names, "decision": first_is_call == bool(wanted_names)})
    failure = next((t["failure"] for t in turns if not t["passed"]), None)
    return {"id": dev.id, "category": CATEGORY, "turns": turns, "full": failure is None, "failure": failure}


def play_all(sessions: list[DevSession], base_url: str, api_key: str, model: str, max_tokens: int,
             concurrency: int) -> list[dict[str, Any]]:
    import openai
    from tqdm.auto import tqdm

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=600, max_retries=0)
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(play, s, client, model, max_tokens) for s in sessions]
        return [f.result() for f in tqdm(futures, desc="dev sessions", unit="session", mininterval=5.0)]


def summarize_sessions(played: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not played:
        return None
    turns = [t for p in played for t in p["turns"]]
    failures = Counter(p["failure"] for p in played if p["failure"])
    return {
        "cases": len(played),
        "turns": len(turns),
        "full_match": sum(p["full"] for p in played) / len(played),
        "turn_accuracy": sum(t["passed"] for t in turns) / len(turns),
        "decision_accuracy": sum(t["decision"] for t in turns) / len(turns),
        "calls_made": sum(len(t["calls"]) for t in turns),
        "reference_calls": sum(len(t["reference_calls"]) for t in turns),
        "failures": {reason: failures.get(reason, 0) for reason in FAILURES},
        "turn_accuracy_by_kind": {kind: sum(t["passed"] for t in turns if t["kind"] == kind)
                                  / max(1, sum(1 for t in turns if t["kind"] == kind))
                                  for kind in ("act", "ask", "unavailable")},
    }
