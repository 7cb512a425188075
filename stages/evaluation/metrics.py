"""The evaluation's outputs: ``<metrics_dir>/<key>.json`` (DVC metrics) and ``<key>_categories.csv``.

The JSON holds accuracy / correct / total per category, BFCL's group scores and overall score over
the categories run (``subset: true`` unless every scoring category ran in full), and ``validity``
(:mod:`stages.evaluation.results`). Each category also carries bfcl's error types counted
(``errors``) and how its answers ended (``incomplete_calls``, ``text_answers``,
``passes_from_incomplete_calls``). The CSV has one row per category, for a DVC bar chart.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from stages.evaluation import EvalError
from stages.evaluation.categories import SCORING_CATEGORIES
from stages.evaluation.config import EvaluateConfig, ModelEntry
from stages.evaluation.results import (
    Outcomes,
    check_validity,
    cut_calls_per_case,
    find_errors,
    model_caused,
    read_outcomes,
    read_results,
)
from stages.evaluation.scores import aggregate, read_scores

RESPONSES_LOG = "responses.jsonl"  # written by stages/bfcl_runner.py (record_response_outcomes)


def build_metrics(model_key: str, entry: ModelEntry, config: EvaluateConfig, bfcl_root: Path,
                  cases_doc: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Metrics from bfcl's work dir (results, scores) and the runner's case list; fails on errors."""
    categories = list(config.categories)
    cases = cases_doc["cases"]
    model_dir = config.bfcl_model.replace("/", "_")
    results = read_results(bfcl_root / "result" / model_dir, categories)
    problems = find_errors([c["id"] for c in cases], results)
    if problems:
        raise EvalError(f"{len(problems)} of {len(cases)} BFCL cases failed during generation "
                        f"(bfcl still exits 0); first ones:\n  " + "\n  ".join(problems[:5]))
    scores = read_scores(bfcl_root / "score" / model_dir, categories)
    outcomes = read_outcomes(bfcl_root / RESPONSES_LOG, cases, {c: s.failed_ids for c, s in scores.items()})
    available = cases_doc["available"]
    subset = set(categories) != set(SCORING_CATEGORIES) or any(
        scores[c].total < int(available[c]) for c in categories)
    return {
        "model": model_key,
        "model_path": entry.path,
        "format": entry.format,
        "bfcl_model": config.bfcl_model,
        "subset": subset,
        "cases": len(cases),
        "categories": {c: {**s.as_dict(), **outcomes.get(c, Outcomes()).as_dict()} for c, s in scores.items()},
        **aggregate(scores),
        "validity": check_validity(cases, results, cut_calls=cut_calls_per_case(bfcl_root / RESPONSES_LOG)).as_dict(),
        # Multi-turn cases that ended on the server's refusal of a history with an unanswered call
        # (the model's cut call, which bfcl could not decode): failed cases, listed here.
        "unanswered_call_errors": sorted(c["id"] for c in cases if model_caused(c["id"], results.get(c["id"]))),
        "seconds": round(seconds, 1),
    }


def write_outputs(metrics: dict[str, Any], metrics_dir: Path, model_key: str) -> tuple[Path, Path]:
    metrics_dir.mkdir(parents=True, exist_ok=True)
    json_path = metrics_dir / f"{model_key}.json"
    csv_path = metrics_dir / f"{model_key}_categories.csv"
    json_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["category", "accuracy", "correct", "total", "incomplete_calls"])
        for category, s in metrics["categories"].items():
            writer.writerow([category, f"{s['accuracy']:.4f}", s["correct"], s["total"], s.get("incomplete_calls", 0)])
    return json_path, csv_path



def write_dev_metrics(metrics: dict[str, Any], metrics_dir: Path, model_key: str) -> Path:
    metrics_dir.mkdir(parents=True, exist_ok=True)
    path = metrics_dir / f"{model_key}.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return path
