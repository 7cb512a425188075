"""The development evaluation: BFCL-like categories on functions the model has never seen.

BFCL is the final report and must never steer training. Training decisions are made here instead:
the cases come from the synthetic generator's held-out domains (``function_bank.HELDOUT``, which
never reach the training data), in BFCL's shapes (no system message, one user request, tools with
their descriptions), plus the conversational categories BFCL's multi-turn set needs:

============== ============================================================ ===============
category       the request                                                  right answer
============== ============================================================ ===============
simple         one tool that fits                                           one call
multiple       2-4 tools, one fits                                          one call
parallel       one tool, several values ("in Paris, Lima and Oslo")         several calls
parallel_mult  several tools, several things asked                          several calls
irrelevance    near-miss tools (same domain or same entity, wrong action)   text
general        tools offered, a general question                            text
missing_info   a required value is missing                                  text (a question)
after_result   a call was made and its result came back                     text (the answer)
chain_next     a result came back; the request needs a second call with it  one call
multi_turn     a second request in a session after a finished first one     call(s)
many_tools     7-10 tools, one fits (a client's whole tool list)            one call
sessions       2-6 turns against a held-out stateful environment, 10-24     every turn's
               tools (``dev_sessions.py``: calls executed, results sent     state and results
               back, scored per turn as BFCL scores multi-turn)
============== ============================================================ ===============

Each case is generated through the project's own server (the same path BFCL takes: constrained
decoding, the model's own format) and scored per category: decision accuracy (call vs text), call
count, function names, exact arguments (order-insensitive), a full-match rate, values copied from a
description's example or default, and answers cut before a call completed. For the octupus format
the decision margins are read from one teacher-forced forward pass over the right answer:
``call - text`` logits at the first token and ``another call - end`` after each call.

The evaluate stage runs it beside BFCL on the same server (``evaluate.dev`` in params.yaml,
``metrics/dev/<model>.json``); alone, on any model folder::

    python -m stages.evaluation.dev --model models/stage2 --format octupus --out /tmp/dev.json
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "general", "missing_info",
              "after_result", "chain_next", "multi_turn", "many_tools")
TEXT_CATEGORIES = frozenset({"irrelevance", "general", "missing_info", "after_result"})
TEXT_STOPS = [". ", ".\n"]


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class DevCase:
    id: str
    category: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    expected_calls: list[dict[str, Any]]  # [] when the right answer is text
    shown: dict[str, list[Any]]  # function name -> example/default values its description shows

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "category": self.category, "messages": self.messages, "tools": self.tools,
                "expected_calls": self.expected_calls}


def _openai_turns(case: Any, stop: int) -> tuple[list[dict[str, Any]], Any]:
    """OpenAI messages for ``case.turns[:stop]`` and the turn at ``stop`` (the one to predict)."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    counter = 0
    for turn in case.turns[:stop]:
        if turn.role == "user":
            messages.append({"role": "user", "content": turn.text})
        elif turn.role == "tool":
            for call_id, (_, result) in zip(pending, turn.results, strict=True):
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": json.dumps(result, ensure_ascii=False)})
            pending = []
        elif turn.calls:
            calls = []
            for call in turn.calls:
                counter += 1
                call_id = f"call_{counter}"
                pending.append(call_id)
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": call.name, "arguments": json.dumps(call.args, ensure_ascii=False)}})
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        else:
            messages.append({"role": "assistant", "content": turn.text})
    return messages, case.turns[stop]


def _cut(category: str, case: Any) -> int | None:
    """Index of the assistant turn a category asks the model to produce."""
    assistant = [i for i, t in enumerate(case.turns) if t.role == "assistant"]
    if category in ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "general",
                    "missing_info", "many_tools"):
        return assistant[0]
    if category == "after_result":
        return assistant[1] if len(assistant) > 1 and not case.turns[assistant[1]].calls else None
    if category == "chain_next":
        return assistant[1] if case.case_type == "chain" else None
    if category == "multi_turn":
        users = [i for i, t in enumerate(case.turns) if t.role == "user"]
        if len(users) < 2:
            return None
        later = [i for i in assistant if i > users[-1]]
        return later[0] if later and case.turns[later[0]].calls else None
    raise ValueError(category)


_GENERATOR_TYPE = {"simple": "single", "multiple": "multiple", "parallel": "parallel",
                   "parallel_multiple": "parallel_multiple", "irrelevance": "irrelevance", "general": "general",
                   "missing_info": "missing_info", "after_result": "single", "chain_next": "chain",
                   "multi_turn": "multi_turn", "many_tools": "single"}
# many_tools: one fitting tool among this many (real clients send their whole tool list; 930 to
# 1,600 tokens of tools, where the other categories stay under 900).
MANY_TOOLS = (7, 10)


def build_devset(per_category: int, seed: int) -> list[DevCase]:
    """``per_category`` cases of each category from the held-out domains; same arguments, same cases."""
    from stages.synthetic.cases import make_case, offer_more
    from stages.synthetic.function_bank import BY_NAME, HELDOUT, openai_tool
    from stages.synthetic.rng import FastRandom

    cases: list[DevCase] = []
    for category in CATEGORIES:
        rng = FastRandom(f"dev:{category}:{seed}")
        made = 0
        attempts = 0
        while made < per_category:
            attempts += 1
            if attempts > per_category * 50:
                raise RuntimeError(f"could not build {per_category} '{category}' cases")
            execute_p = 1.0 if category == "after_result" else 0.0
            case = make_case(rng, _GENERATOR_TYPE[category], False, execute_p, bank=HELDOUT)
            stop = _cut(category, case)
            if stop is None:
                continue
            messages, target = _openai_turns(case, stop)
            expected = [{"name": c.name, "arguments": c.args} for c in target.calls]
            if (category in TEXT_CATEGORIES) == bool(expected):
                continue
            offered = case.tools
            if category == "many_tools":
                offered = offer_more(rng, HELDOUT, offered, rng.randint(*MANY_TOOLS))
            tools = [openai_tool(f) for f in offered]
            shown = {f.name: list(f.shown.values()) for f in offered}
            cases.append(DevCase(f"{category}_{made}", category, messages, tools, expected, shown))
            made += 1
    names = {c["function"]["name"] for case in cases for c in case.tools}
    assert all(BY_NAME[n].domain.key in HELDOUT.by_domain for n in names)
    return cases


# ----------------------------------------------------------------------------- scoring


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _matched(expected: list[dict[str, Any]], got: list[dict[str, Any]], key: Any) -> int:
    """How many expected calls find a distinct predicted call with the same ``key``."""
    pool = Counter(key(c) for c in got)
    hits = 0
    for call in expected:
        k = key(call)
        if pool[k] > 0:
            pool[k] -= 1
            hits += 1
    return hits


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def score_case(case: DevCase, answer: dict[str, Any]) -> dict[str, Any]:
    """One case's outcome from the server's answer ({content, calls: [{name, arguments}], finish})."""
    got = answer["calls"]
    want = case.expected_calls
    out: dict[str, Any] = {"id": case.id, "category": case.category, "calls": len(got),
                           "finish": answer["finish"], "error": answer.get("error")}
    out["decision"] = bool(got) == bool(want)
    out["incomplete"] = answer["finish"] == "length" and not got and answer.get("content") in (None, "")
    if want:
        out["count"] = len(got) == len(want)
        names_ok = _matched(want, got, lambda c: c["name"]) == len(want) and len(got) == len(want)
        args_ok = names_ok and _matched(want, got, lambda c: (c["name"], _canonical(c["arguments"]))) == len(want)
        out["names"] = names_ok
        out["args"] = args_ok
        out["full"] = args_ok
    else:
        out["full"] = not got
    copied = 0
    for call in got:
        shown = case.shown.get(call["name"], [])
        values = _leaves(call["arguments"]) if isinstance(call["arguments"], (dict, list)) else []
        copied += sum(1 for v in values if v in shown and not isinstance(v, bool))
    out["copied_values"] = copied
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(scored: list[dict[str, Any]], margins: dict[str, dict[str, list[float]]] | None,
              sessions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-category scores and their unweighted means; ``sessions`` is the multi-turn environment
    category's summary (:func:`stages.evaluation.dev_sessions.summarize_sessions`), when it ran.
    ``full_match`` and ``decision_accuracy`` are means over every category, sessions included; the
    call and text means cover the single-request categories only."""
    per: dict[str, Any] = {}
    for category in CATEGORIES:
        rows = [s for s in scored if s["category"] == category]
        if not rows:
            continue
        entry: dict[str, Any] = {
            "cases": len(rows),
            "full_match": _mean([float(r["full"]) for r in rows]),
            "decision_accuracy": _mean([float(r["decision"]) for r in rows]),
            "calls_made": sum(1 for r in rows if r["calls"]),
            "incomplete": sum(1 for r in rows if r["incomplete"]),
            "copied_values": sum(r["copied_values"] for r in rows),
        }
        if category not in TEXT_CATEGORIES:
            entry["count_accuracy"] = _mean([float(r["count"]) for r in rows])
            entry["name_accuracy"] = _mean([float(r["names"]) for r in rows])
            entry["args_exact"] = _mean([float(r["args"]) for r in rows])
        if margins is not None and category in margins:
            m = margins[category]
            entry["call_minus_text"] = _mean(m["decision"])
            if m["more"]:
                entry["another_call_minus_end_when_more"] = _mean(m["more"])
            if m["stop"]:
                entry["another_call_minus_end_when_done"] = _mean(m["stop"])
        per[category] = entry
    call_cats = [c for c in per if c not in TEXT_CATEGORIES]
    text_cats = [c for c in per if c in TEXT_CATEGORIES]
    if sessions is not None:
        per["sessions"] = sessions
    summary = {
        # Unweighted means over categories, so a category's case count does not set its weight.
        "full_match": _mean([per[c]["full_match"] for c in per]),
        "decision_accuracy": _mean([per[c]["decision_accuracy"] for c in per]),
        "call_categories_full_match": _mean([per[c]["full_match"] for c in call_cats]),
        "text_categories_full_match": _mean([per[c]["full_match"] for c in text_cats]),
        "copied_values": sum(per[c].get("copied_values", 0) for c in per),
        "incomplete": sum(per[c].get("incomplete", 0) for c in per),
    }
    if sessions is not None:
        summary["sessions_full_match"] = sessions["full_match"]
        summary["sessions_turn_accuracy"] = sessions["turn_accuracy"]
    return {"summary": summary, "categories": per}


# ----------------------------------------------------------------------------- generation


def _ask(client: Any, model: str, case: DevCase, max_tokens: int) -> dict[str, Any]:
    import openai

    try:
        # Only whether an answer is text is scored, never its wording, and no call can follow text
        # (the grammar): a text answer may end at its first sentence. Stop strings never cut a call.
        resp = client.chat.completions.create(model=model, messages=case.messages, tools=case.tools,
                                              temperature=0.0, max_tokens=max_tokens, seed=0, stop=TEXT_STOPS)
    except openai.APIError as exc:  # a refused request is the model's failure, kept as such
        return {"content": None, "calls": [], "finish": "error", "error": str(exc)[:300]}
    choice = resp.choices[0]
    calls = []
    for call in choice.message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            arguments = call.function.arguments
        calls.append({"name": call.function.name, "arguments": arguments})
    return {"content": choice.message.content, "calls": calls, "finish": choice.finish_reason}


def generate(cases: list[DevCase], base_url: str, api_key: str, model: str, max_tokens: int,
             concurrency: int) -> list[dict[str, Any]]:
    import openai
    from tqdm.auto import tqdm

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=600, max_retries=0)
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(_ask, client, model, c, max_tokens) for c in cases]
        return [f.result() for f in tqdm(futures, desc="dev cases", unit="case", mininterval=5.0)]


# ----------------------------------------------------------------------------- decision margins


def decision_margins(model_dir: str, cases: list[DevCase]) -> dict[str, dict[str, list[float]]]:
    """Teacher-forced logit margins at the decision points of each case's right answer (octupus)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolcall.chat_template import render_assistant
    from toolcall.messages import canonicalize_messages
    from toolcall.metadata import saved_tool_format
    from toolcall.tokens import CONTENT, FUNCTION_CALL

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tool_format = saved_tool_format(model_dir)
    call_id, text_id = tokenizer.convert_tokens_to_ids([FUNCTION_CALL, CONTENT])
    eos_id = tokenizer.eos_token_id
    out: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        prompt = tokenizer.apply_chat_template(canonicalize_messages(case.messages), tools=case.tools,
                                               add_generation_prompt=True, tokenize=False, tool_format=tool_format)
        if case.expected_calls:
            gold = {"role": "assistant", "tool_calls": [
                {"function": {"name": c["name"], "arguments": c["arguments"]}} for c in case.expected_calls]}
        else:
            gold = {"role": "assistant", "content": "…"}
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        gold_ids = tokenizer(render_assistant(gold, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
        # Where the margins are read: the prompt's last position (call or text?) and, when the answer
        # calls, the position before each token that follows a call (another call, or eos).
        after_calls = ([len(prompt_ids) + j - 1 for j, t in enumerate(gold_ids) if j > 0 and t in (call_id, eos_id)]
                       if case.expected_calls else [])
        ids = torch.tensor([prompt_ids + gold_ids])
        with torch.no_grad():
            # The vocabulary projection at those positions only (a fifth of the pass on every position).
            logits = model(ids, logits_to_keep=torch.tensor([len(prompt_ids) - 1, *after_calls])).logits[0]
        m = out.setdefault(case.category, {"decision": [], "more": [], "stop": []})
        m["decision"].append(float(logits[0, call_id] - logits[0, text_id]))
        for k, row in enumerate(logits[1:]):
            (m["more"] if k < len(after_calls) - 1 else m["stop"]).append(float(row[call_id] - row[eos_id]))
    return out


# ----------------------------------------------------------------------------- running it


def generate_and_score(cases: list[DevCase], base_url: str, api_key: str, model: str, max_tokens: int,
                       concurrency: int, work_dir: Path) -> list[dict[str, Any]]:
    """Ask the running server every case; keep cases and answers in ``work_dir``; return the scores."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "cases.jsonl").write_text(
        "".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    answers = generate(cases, base_url, api_key, model, max_tokens, concurrency)
    scored = [score_case(c, a) for c, a in zip(cases, answers, strict=True)]
    with (work_dir / "answers.jsonl").open("w", encoding="utf-8") as fh:
        for c, a, s in zip(cases, answers, scored, strict=True):
            fh.write(json.dumps({"id": c.id, "answer": a, "score": s}, ensure_ascii=False) + "\n")
    return scored


def play_and_record(n: int, seed: int, base_url: str, api_key: str, model: str, max_tokens: int, concurrency: int,
                    work_dir: Path) -> dict[str, Any] | None:
    """The ``sessions`` category (``n`` held-out environment sessions; None when 0): played through
    the running server, sessions and outcomes kept in ``work_dir``, summarized."""
    from stages.evaluation.dev_sessions import build_sessions, play_all, summarize_sessions

    if not n:
        return None
    sessions = build_sessions(n, seed)
    start = time.monotonic()
    played = play_all(sessions, base_url, api_key, model, max_tokens, concurrency)
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / "sessions.jsonl").open("w", encoding="utf-8") as fh:
        for session, outcome in zip(sessions, played, strict=True):
            fh.write(json.dumps({**session.to_json(), "outcome": outcome}, ensure_ascii=False) + "\n")
    summary = summarize_sessions(played)
    assert summary is not None
    summary["seconds"] = round(time.monotonic() - start, 1)
    return summary


def margin_subset(cases: list[DevCase], per_category: int) -> list[DevCase]:
    """The first ``per_category`` cases of each category (the margins need a forward pass each)."""
    seen: Counter[str] = Counter()
    out = []
    for case in cases:
        if seen[case.category] < per_category:
            seen[case.category] += 1
            out.append(case)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the development evaluation alone on a model folder (what the evaluate stage also does)."""
    from serve.process import free_loopback_port, running_server, serve_command
    from stages.config import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--format", default="octupus", choices=["octupus", "hermes"])
    parser.add_argument("--per-category", type=int, default=12)
    parser.add_argument("--sessions", type=int, default=12, help="held-out environment sessions (0: none)")
    parser.add_argument("--margin-cases", type=int, default=4, help="cases per category for the margins")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("server_flags", nargs="*", help="more `python -m serve` flags (after --)")
    args = parser.parse_args(argv)
    setup_logging()
    work = Path(args.out).with_suffix("")
    cases = build_devset(args.per_category, args.seed)
    start = time.monotonic()
    port = free_loopback_port()
    api_key = secrets.token_hex(8)
    flags = ["--model", args.model, "--format", args.format, "--served-model-name", "dev", "--api-key", api_key,
             "--default-max-tokens", str(args.max_tokens), *(args.server_flags or ["--max-batch", "8"])]
    with running_server(serve_command(port, flags), port, work / "server.log", 600) as server:
        scored = generate_and_score(cases, server.base_url + "/v1", api_key, "dev", args.max_tokens,
                                    args.concurrency, work)
        sessions = play_and_record(args.sessions, args.seed, server.base_url + "/v1", api_key, "dev",
                                   args.max_tokens, args.concurrency, work)
    margins = None
    if args.format == "octupus" and args.margin_cases:
        margins = decision_margins(args.model, margin_subset(cases, args.margin_cases))
    result = summarize(scored, margins, sessions)
    result["seconds"] = round(time.monotonic() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("dev eval: %s", json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
