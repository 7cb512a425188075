"""Deterministic synthetic rows in each source kind's raw hub schema.

``generate_rows(kind, n, seed)`` is the entry point for the ``raw`` stage and for benchmarks; the
same arguments always give the same rows (one ``random.Random`` subclass per call, seeded from the
kind and seed; no global state, no ``hash()``). 200k rows take roughly 20-30 s of CPU.
``generate_samples`` / ``iter_samples`` also say which case each row is and which defect, if any,
it carries, so tests and benchmarks can check the filter against the truth. The cases come from
this package's case model; each kind's writer (``stages/kinds/``) renders them in its schema.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stages.kinds import KINDS, SOURCE_KINDS
from stages.kinds.apigen_mt import SESSION_DEFECTS
from stages.synthetic.cases import CASE_TYPES, CASE_WEIGHTS, DEFECTS, Case, make_case, make_malformed, offer_more
from stages.synthetic.chat import topical_qa
from stages.synthetic.function_bank import TRAIN
from stages.synthetic.rng import FastRandom

CHAT_DEFECTS = ("empty_turn", "wrong_role_order", "no_answer")

# Share of cases that go on to a tool result and a final answer. ToolACE rows mostly end on the
# call; hermes rows mostly carry the result; the legacy zh format sits in between.
EXECUTE_P = {"hermes_fc": 0.7, "toolace": 0.35, "fc_zh_hard": 0.6}
# ToolACE also has rows whose tools and calls use a row-specific non-JSON syntax
# ("(Name=>['k'--'v'])"); a normalizer cannot read them, so they count as malformed here.
KIND_DEFECTS = {"hermes_fc": DEFECTS, "toolace": (*DEFECTS, "foreign_call_format"), "fc_zh_hard": DEFECTS,
                "apigen_mt": tuple(SESSION_DEFECTS)}
# Attempts at a verified session per row before the generator gives up (drops are rare: a plan
# whose call the environment refuses; each is counted).
SESSION_ATTEMPTS = 50


@dataclass(frozen=True)
class Sample:
    row: dict[str, Any]
    case_type: str  # one of CASE_TYPES, "chat" or "session"
    defect: str | None  # one of DEFECTS / CHAT_DEFECTS for malformed rows


def _chat_turns(rng: random.Random, zh: bool, defect: str | None) -> tuple[list[tuple[str, str]], str]:
    turns: list[tuple[str, str]] = []
    topic = ""
    for _ in range(rng.choices([1, 2, 3], weights=[60, 28, 12])[0]):
        name, (question, answer) = topical_qa(rng, zh)
        topic = topic or name
        turns += [("user", question), ("assistant", answer)]
    if defect == "empty_turn":
        idx = rng.randrange(len(turns))
        turns[idx] = (turns[idx][0], "")
    elif defect == "wrong_role_order":
        turns[0], turns[1] = turns[1], turns[0]
    elif defect == "no_answer":
        turns.pop()
    return turns, topic


def _malformed_positions(rng: random.Random, n: int, fraction: float) -> set[int]:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"malformed_fraction must be within [0, 1], got {fraction}")
    return set(rng.sample(range(n), round(n * fraction)))


def _sessions(kind: str, rng: random.Random, n: int, bad: set[int], stats: Counter[str] | None,
              shape: dict[str, Any] | None) -> Iterator[Sample]:
    """Verified environment sessions (training environments, training bank for the other tools).
    A session that cannot be kept is dropped and counted in ``stats`` under its reason."""
    from stages.synthetic.environments import training_environments
    from stages.synthetic.environments.sessions import SessionDropped, build_session
    from stages.synthetic.function_bank import TRAIN

    pool = training_environments()
    write = SOURCE_KINDS[kind].write
    for i in range(n):
        # The defect is drawn once per broken row, so every defect keeps its share even when one
        # needs a session with something particular (a call with arguments).
        defect = rng.choice(KIND_DEFECTS[kind]) if i in bad else None
        for _ in range(SESSION_ATTEMPTS):
            try:
                session = build_session(rng, pool, TRAIN, **(shape or {}))
            except SessionDropped as exc:
                if stats is not None:
                    stats[exc.reason] += 1
                continue
            session.defect = defect
            try:
                row = write(rng, session)
            except ValueError:  # the defect does not apply to this session: another one
                continue
            yield Sample(row, "session", session.defect)
            break
        else:
            raise RuntimeError(f"no verified session in {SESSION_ATTEMPTS} attempts; drops: {dict(stats or {})}")


def longer_list(rng: random.Random, case: Case, tool_lists: dict[str, Any] | None) -> Case:
    """``case`` with a longer tool list for a ``tool_lists["share"]`` of the cases: its own tools
    plus other functions of the training bank, ``tool_lists["tools"]`` = [min, max] in all (clients
    send their whole tool list), none sharing an entity with an offered tool or with what a refusal
    says cannot be done, so whether a tool fits, and which, stays what the case says. Any case type:
    calls and text answers alike, so the list's length alone never tells which to give. ``rng`` is
    a stream of its own: with no ``tool_lists`` nothing is drawn and the rows stay byte-identical."""
    if not tool_lists or tool_lists["share"] <= 0 or rng.random() >= tool_lists["share"]:
        return case
    low, high = tool_lists["tools"]
    if len(case.tools) >= high:
        return case
    total = rng.randint(max(low, len(case.tools)), high)
    return dataclasses.replace(case, tools=offer_more(rng, TRAIN, case.tools, total, case.avoid))


def mixed_case_weights(overrides: dict[str, float] | None) -> tuple[float, ...]:
    """The weights of :data:`CASE_TYPES` with ``overrides`` (case type -> relative weight, >= 0) in
    place of the defaults of the types it names; the defaults themselves when there is none."""
    if not overrides:
        return CASE_WEIGHTS
    unknown = sorted(set(overrides) - set(CASE_TYPES))
    if unknown:
        raise ValueError(f"case_weights: unknown case type(s) {unknown}; expected some of {', '.join(CASE_TYPES)}")
    if any(w < 0 for w in overrides.values()):
        raise ValueError(f"case_weights: weights must be >= 0, got {overrides}")
    weights = tuple(overrides.get(t, w) for t, w in zip(CASE_TYPES, CASE_WEIGHTS, strict=True))
    if sum(weights) <= 0:
        raise ValueError("case_weights: at least one case type needs a weight above 0")
    return weights


def iter_samples(kind: str, n: int, seed: int, malformed_fraction: float = 0.05,
                 stats: Counter[str] | None = None, sessions: dict[str, Any] | None = None,
                 tool_lists: dict[str, Any] | None = None,
                 case_weights: dict[str, float] | None = None) -> Iterator[Sample]:
    """Rows one at a time (the stage streams them to disk behind a progress bar). Session kinds
    only: ``stats`` counts generated sessions that were dropped, by reason; ``sessions`` sets their
    shape (``functions`` and ``turns`` ranges, see ``build_session``). Tool-offering kinds only:
    ``tool_lists`` = {share, tools: [min, max]} gives a share of the well-formed cases a longer
    tool list (:func:`longer_list`); ``case_weights`` = {case type: relative weight} replaces the
    default weights of the types it names (:data:`CASE_WEIGHTS`; with none, the rows stay
    byte-identical)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if n < 0:
        raise ValueError(f"row count must be >= 0, got {n}")
    rng = FastRandom(f"{kind}:{seed}")
    bad = _malformed_positions(rng, n, malformed_fraction)
    source = SOURCE_KINDS[kind]
    for option, value in (("tool_lists", tool_lists), ("case_weights", case_weights)):
        if value and (source.sessions or not source.offers_tools):
            raise ValueError(f"{option} applies to kinds whose rows offer tools per case, not to {kind!r}")
    weights = mixed_case_weights(case_weights)
    if source.sessions:
        yield from _sessions(kind, rng, n, bad, stats, sessions)
        return
    if source.offers_tools:
        zh = kind == "fc_zh_hard"
        execute_p = EXECUTE_P[kind]
        list_rng = FastRandom(f"{kind}:{seed}:tool_lists")
        for i in range(n):
            if i in bad:
                case = make_malformed(rng, zh, execute_p, KIND_DEFECTS[kind])
            else:
                case = make_case(rng, rng.choices(CASE_TYPES, weights=weights)[0], zh, execute_p)
                case = longer_list(list_rng, case, tool_lists)
            yield Sample(source.write(rng, case), case.case_type, case.defect)
        return
    for i in range(n):
        defect = rng.choice(CHAT_DEFECTS) if i in bad else None
        # WildChat is multilingual; a share of its synthetic rows is Chinese.
        zh = kind == "wildchat" and rng.random() < 0.15
        turns, topic = _chat_turns(rng, zh, defect)
        yield Sample(source.write(rng, turns, topic, zh), "chat", defect)


def generate_samples(kind: str, n: int, seed: int, malformed_fraction: float = 0.05) -> list[Sample]:
    return list(iter_samples(kind, n, seed, malformed_fraction))


def generate_rows(kind: str, n: int, seed: int, malformed_fraction: float = 0.05) -> list[dict[str, Any]]:
    """``n`` raw rows of ``kind``, identical for identical arguments."""
    return [s.row for s in generate_samples(kind, n, seed, malformed_fraction)]


def defect_counts(samples: Iterable[Sample]) -> Counter[str]:
    return Counter(s.defect for s in samples if s.defect)


__all__ = ["CASE_TYPES", "DEFECTS", "KIND_DEFECTS", "CHAT_DEFECTS", "Sample", "mixed_case_weights",
           "iter_samples", "generate_samples", "generate_rows", "defect_counts"]
