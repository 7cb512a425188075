"""bfcl's result files: what the model answered per case, inference errors, and call validity.

A result file (``result/<model>/<group>/BFCL_v4_<category>_result.json``) is JSON lines, one per
case: ``{"id", "result", ...}``. Single-turn FC results are lists of ``{name: arguments_json}``;
multi-turn results nest them as turns -> steps -> calls; text answers are strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.evaluation import EvalError
from stages.evaluation.scores import VERSION_PREFIX

ERROR_PREFIX = "Error during inference"
# A multi-turn case whose history the server refused because a call in it has no result: bfcl
# could not decode one of the model's own calls (a call cut at the output cap), went on to the next
# turn without answering it, and the server (like OpenAI's API) refuses a call left unanswered.
# The model's failure, scored as one by bfcl; not a broken evaluation.
UNANSWERED_CALL = "have no tool message answering them"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise EvalError(f"{path}:{n}: not JSON ({exc})") from exc
    return rows


def read_results(result_root: Path, categories: Sequence[str]) -> dict[str, Any]:
    """Every case's raw ``result`` by id, from ``BFCL_v4_<category>_result.json`` files."""
    results: dict[str, Any] = {}
    for category in categories:
        for path in sorted(result_root.rglob(f"{VERSION_PREFIX}_{category}_result.json")):
            for row in load_jsonl(path):
                results[row["id"]] = row.get("result")
    return results


def model_caused(case_id: str, result: Any) -> bool:
    """An inference error that the model's own output caused (see :data:`UNANSWERED_CALL`)."""
    return (case_id.startswith("multi_turn") and isinstance(result, str) and result.startswith(ERROR_PREFIX)
            and UNANSWERED_CALL in result)


def find_errors(expected_ids: Sequence[str], results: dict[str, Any]) -> list[str]:
    """Cases that did not produce a model answer: missing, or bfcl's recorded inference error
    (other than :func:`model_caused` ones, which bfcl scores as failed cases).

    ``bfcl generate`` exits 0 even when every request failed (it writes the exception text as the
    case's result), so this is the only place such a run is caught.
    """
    problems = []
    for case_id in expected_ids:
        if case_id not in results:
            problems.append(f"{case_id}: no result written")
        elif isinstance(results[case_id], str) and results[case_id].startswith(ERROR_PREFIX) \
                and not model_caused(case_id, results[case_id]):
            problems.append(f"{case_id}: {results[case_id][:300]}")
    return problems


def iter_calls(result: Any) -> Iterator[tuple[str, Any]]:
    """(name, raw arguments) of every tool call in a result, at any nesting depth.

    Single-turn FC results are lists of ``{name: arguments_json}``; multi-turn results nest them
    as turns -> steps -> calls. Text answers are strings and hold no call.
    """
    if isinstance(result, list):
        for item in result:
            yield from iter_calls(item)
    elif isinstance(result, dict):
        yield from result.items()


@dataclass
class Validity:
    calls: int = 0
    valid: int = 0
    unknown_name: int = 0
    bad_json: int = 0
    schema_violation: int = 0
    incomplete: int = 0  # calls the server returned cut (status incomplete): not counted in validity
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            # No call at all makes the share undefined; 1.0 would claim something never tested.
            "validity": self.valid / self.calls if self.calls else None,
            "tool_calls": self.calls, "valid_calls": self.valid, "unknown_name": self.unknown_name,
            "bad_json": self.bad_json, "schema_violation": self.schema_violation,
            "incomplete_calls": self.incomplete, "invalid_examples": self.examples,
        }


def check_validity(cases: Sequence[dict[str, Any]], results: dict[str, Any], max_examples: int = 5,
                   cut_calls: dict[str, int] | None = None) -> Validity:
    """Check every returned call against the tools its case offered (the tools bfcl sent).

    ``cut_calls``: per case, how many calls the server returned marked incomplete (an answer cut by
    the output cap inside a call's arguments, see docs/design.md). Such a call's arguments never
    parse; up to that many unparseable calls of the case are counted as ``incomplete``, not as
    invalid: the server never presented them as complete. Every other call must be valid."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    out = Validity()

    def bad(kind: str, message: str) -> None:
        setattr(out, kind, getattr(out, kind) + 1)
        if len(out.examples) < max_examples:
            out.examples.append(message)

    for case in cases:
        schemas = {t["name"]: t.get("parameters") or {"type": "object"} for t in case["tools"]}
        cut_left = (cut_calls or {}).get(str(case["id"]), 0)
        for name, raw in iter_calls(results.get(case["id"])):
            where = f"{case['id']} {name}"
            try:
                arguments = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError as exc:
                if cut_left > 0:
                    cut_left -= 1
                    out.incomplete += 1
                    continue
                out.calls += 1
                bad("bad_json", f"{where}: arguments are not JSON ({exc.msg})")
                continue
            out.calls += 1
            if name not in schemas:
                bad("unknown_name", f"{where}: name not offered")
                continue
            schema = schemas[name]
            try:
                validator = validator_for(schema)(schema)
                error = next(iter(validator.iter_errors(arguments)), None)
            except SchemaError as exc:
                raise EvalError(f"{where}: the offered schema itself is invalid: {exc.message}") from exc
            if error is not None:
                bad("schema_violation", f"{where}: {error.message[:200]}")
                continue
            out.valid += 1
    return out


# ----------------------------------------------------------------------------- how answers ended


@dataclass
class Outcomes:
    """How the answers of one category ended, from the runner's ``responses.jsonl``.

    ``incomplete_calls``: cases with an answer cut inside a call (the server's output cap or its
    repetition guard stopped it with a call open). The server returns the cut call marked
    incomplete; bfcl ignores the mark and scores the case wrong (it cannot decode the arguments).
    A server that drops cut calls makes bfcl read "no call" instead, a pass in irrelevance.
    ``text_answers``: cases whose every answer was text only (a real abstention in irrelevance).
    ``passes_from_incomplete_calls``: cases bfcl scored correct although an answer was cut inside a
    call (an artefact, not an abstention).
    """

    incomplete_calls: int = 0
    text_answers: int = 0
    passes_from_incomplete_calls: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"incomplete_calls": self.incomplete_calls, "text_answers": self.text_answers,
                "passes_from_incomplete_calls": self.passes_from_incomplete_calls}


def ended_inside_a_call(line: dict[str, Any]) -> bool:
    """An answer the server cut (status incomplete) while a call was open: a call item marked
    incomplete, or nothing at all returned (a call dropped as incomplete leaves no text either)."""
    if line.get("status") != "incomplete":
        return False
    return int(line.get("incomplete_calls") or 0) > 0 or (not line.get("calls") and not line.get("text_chars"))


def cut_calls_per_case(path: Path) -> dict[str, int]:
    """Calls returned marked incomplete, per case id, from the runner's log (empty when missing)."""
    out: dict[str, int] = {}
    if path.is_file():
        for line in load_jsonl(path):
            out[str(line.get("id"))] = out.get(str(line.get("id")), 0) + int(line.get("incomplete_calls") or 0)
    return out


def read_outcomes(path: Path, cases: Sequence[dict[str, Any]], failed: dict[str, frozenset[str]]
                  ) -> dict[str, Outcomes]:
    """Per category (of ``cases``: ``{"id", "category"}``) how its answers ended; ``failed`` holds
    each category's failed case ids. A missing log (an older runner) gives empty outcomes."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        for line in load_jsonl(path):
            by_case.setdefault(str(line.get("id")), []).append(line)
    out: dict[str, Outcomes] = {}
    for case in cases:
        category, case_id = case["category"], str(case["id"])
        o = out.setdefault(category, Outcomes())
        answers = by_case.get(case_id, [])
        if any(ended_inside_a_call(a) for a in answers):
            o.incomplete_calls += 1
            if case_id not in failed.get(category, frozenset()):
                o.passes_from_incomplete_calls += 1
        elif answers and all(not a.get("calls") and a.get("text_chars") for a in answers):
            o.text_answers += 1
    return out
