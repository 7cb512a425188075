"""bfcl's score files, one per category, and BFCL's group and overall scores over what ran.

A score file (``score/<model>/<group>/BFCL_v4_<category>_score.json``) is JSON lines: a header
``{"accuracy", "correct_count", "total_count"}``, then one line per failed case (its id, and
bfcl's ``error_type`` and ``error`` for why it failed).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.evaluation import EvalError
from stages.evaluation.categories import GROUPS, OVERALL_WEIGHTS, Node

VERSION_PREFIX = "BFCL_v4"


@dataclass(frozen=True)
class CategoryScore:
    """One category's result, as it appears under ``categories`` in the metrics file."""

    accuracy: float
    correct: int
    total: int
    # bfcl's error_type of each failed case, counted ("simple_function_checker:wrong_count", ...)
    errors: dict[str, int] = field(default_factory=dict)
    failed_ids: frozenset[str] = frozenset()

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                "errors": dict(sorted(self.errors.items()))}


def read_score_file(path: Path) -> CategoryScore:
    """One category's result: the header line, and the error type of each failed case after it."""
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
        rest = fh.readlines()
    try:
        head = json.loads(first)
        accuracy, correct, total = float(head["accuracy"]), int(head["correct_count"]), int(head["total_count"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"{path}: unreadable score header {first[:200]!r}") from exc
    errors: Counter[str] = Counter()
    failed: set[str] = set()
    for n, line in enumerate(rest, 2):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{path}:{n}: not JSON ({exc.msg})") from exc
        errors[str(entry.get("error_type") or "unknown")] += 1
        if entry.get("id") is not None:
            failed.add(str(entry["id"]))
    missing = total - correct - sum(errors.values())
    if missing > 0:  # failures bfcl counted without a line of their own: counted, not hidden
        errors["not_listed"] += missing
    return CategoryScore(accuracy, correct, total, dict(errors), frozenset(failed))


def read_scores(score_root: Path, categories: Sequence[str]) -> dict[str, CategoryScore]:
    """Each category's result, from ``BFCL_v4_<category>_score.json`` under ``score_root``."""
    scores: dict[str, CategoryScore] = {}
    for category in categories:
        matches = sorted(score_root.rglob(f"{VERSION_PREFIX}_{category}_score.json"))
        if not matches:
            raise EvalError(f"bfcl wrote no score file for '{category}' under {score_root}")
        scores[category] = read_score_file(matches[0])
    return scores


def _node_score(node: Node | str, scores: dict[str, CategoryScore]) -> tuple[float, int] | None:
    """(accuracy, case count) of a node over the categories present, or None when none is."""
    if isinstance(node, str):
        s = scores.get(node)
        return None if s is None else (s.accuracy, s.total)
    how, children = node
    parts = [p for p in (_node_score(c, scores) for c in children) if p is not None]
    if not parts:
        return None
    count = sum(n for _, n in parts)
    if how == "weighted":
        return (sum(a * n for a, n in parts) / count if count else 0.0), count
    return sum(a for a, _ in parts) / len(parts), count


def aggregate(scores: dict[str, CategoryScore]) -> dict[str, Any]:
    """BFCL's group scores and overall score, restricted to (and re-weighted over) what ran.

    BFCL itself counts a category that did not run as 0; on a subset that would measure the
    subset's size, not the model, so missing categories and groups are left out instead.
    """
    groups: dict[str, float] = {}
    for name, node in GROUPS.items():
        part = _node_score(node, scores)
        if part is not None:
            groups[name] = part[0]
    weight_sum = sum(OVERALL_WEIGHTS[g] for g in groups)
    weights = {g: OVERALL_WEIGHTS[g] / weight_sum for g in groups} if weight_sum else {}
    overall = sum(groups[g] * w for g, w in weights.items()) if groups else None
    # multi_turn weighs half the overall score on a subset without agentic, with few cases; the
    # single-turn groups together move with less noise.
    single = [groups[g] for g in ("non_live", "live", "irrelevance") if g in groups]
    return {"groups": groups, "overall": overall, "overall_weights": weights,
            "single_turn_mean": sum(single) / len(single) if single else None}
