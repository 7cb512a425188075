"""Stage ``evaluate``: BFCL (bfcl-eval) on one model, through the project's own server.

    python -m stages.evaluate --model-key base [--params params.yaml]

Reads ``evaluate.models.<key>`` ({path, format}) and the shared settings of the ``evaluate``
section, starts ``python -m serve`` for that model on a free loopback port, waits for ``/health``,
runs bfcl-eval's generation (Responses API path, a ``gpt-*-FC`` registry name) and partial
evaluation inside ``.venv-bfcl`` (``stages/bfcl_runner.py``), stops the server (also on errors
and Ctrl-C) and writes:

- ``<metrics_dir>/<key>.json``: accuracy / correct / total per category, BFCL's group scores and
  overall score over the categories run (``subset: true`` unless every scoring category ran in
  full), and ``validity``: the share of returned tool calls whose name was offered and whose
  arguments parse and validate against the offered schema;
- ``<metrics_dir>/<key>_categories.csv``: one row per category, for a DVC bar chart.

bfcl's raw result and score files stay under ``<work_dir>/<key>/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from stages.config import ConfigError, StrictModel, load_section, log_config, setup_logging, stage_argparser

log = logging.getLogger("stages.evaluate")

VERSION_PREFIX = "BFCL_v4"
ERROR_PREFIX = "Error during inference"
FC_SUFFIX = "-FC"

# bfcl-eval 2026.3.23 (constants/category_mapping.py) scoring categories, by leaderboard section.
NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
            "irrelevance")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
        "live_relevance")
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
WEB_SEARCH = ("web_search_base", "web_search_no_snippet")
MEMORY = ("memory_kv", "memory_vector", "memory_rec_sum")
SCORING_CATEGORIES = NON_LIVE + LIVE + MULTI_TURN + WEB_SEARCH + MEMORY
# web_search calls SerpAPI; memory_vector downloads an embedding model, and the memory categories
# share prerequisite conversations with it. Offline they would all score 0 without saying why.
INTERNET_CATEGORIES = WEB_SEARCH + MEMORY

# BFCL's aggregation (eval_checker/eval_runner_helper.py, generate_leaderboard_csv): a node is
# ("mean", children) for an unweighted mean of its children, or ("weighted", children) for a
# mean weighted by case counts. Leaves are categories.
Node = tuple[str, tuple[Any, ...]]
GROUPS: dict[str, Node] = {
    "non_live": ("mean", (("mean", ("simple_python", "simple_java", "simple_javascript")),
                          "multiple", "parallel", "parallel_multiple")),
    "live": ("weighted", ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")),
    "irrelevance": ("mean", ("irrelevance", "live_irrelevance")),
    "multi_turn": ("mean", MULTI_TURN),
    "agentic": ("mean", (("mean", WEB_SEARCH), ("mean", MEMORY))),
}
OVERALL_WEIGHTS = {"non_live": 10.0, "live": 10.0, "irrelevance": 10.0, "multi_turn": 30.0, "agentic": 40.0}


class EvalError(RuntimeError):
    """The evaluation could not produce trustworthy metrics (server, bfcl or result problems)."""


# ----------------------------------------------------------------------------- configuration


class ModelEntry(StrictModel):
    path: str
    format: Literal["auto", "octupus", "hermes"]


class ServerSettings(StrictModel):
    backend: Literal["transformers", "vllm"]
    engine: Literal["llguidance", "lm-format-enforcer"]
    # BFCL sends no max_tokens: this is the server's default output cap for every request.
    max_output_tokens: int
    # null: the model's own context (SmolLM2: 8,192; some multi-turn cases need > 4,096).
    max_context: int | None
    threads: int | None
    # transformers backend: requests decoded together (continuous batching; 1 = one at a time).
    max_batch: int = Field(ge=1)
    # transformers backend: MiB of prompt KV kept for reuse (multi-turn steps resend the whole
    # conversation); 0 = off.
    prefix_cache_mb: float = Field(ge=0)
    startup_timeout_s: float
    extra_args: list[str]


class EvaluateConfig(StrictModel):
    models: dict[str, ModelEntry]
    # category -> number of leading cases, or "all"
    categories: dict[str, int | Literal["all"]]
    bfcl_model: str
    bfcl_venv: str
    work_dir: str
    metrics_dir: str
    # cases bfcl sends at once (its --num-threads); more than the server's batch only queues.
    concurrency: int = Field(ge=1)
    server: ServerSettings

    @field_validator("categories")
    @classmethod
    def _check_categories(cls, value: dict[str, int | str]) -> dict[str, int | str]:
        if not value:
            raise ValueError("at least one category is needed")
        refused = [c for c in value if c in INTERNET_CATEGORIES]
        if refused:
            raise ValueError(
                f"categories {refused} need the internet (web_search calls SerpAPI, memory_* needs a "
                "downloaded embedding model and its prerequisite runs) and would silently score 0 here; "
                "remove them")
        unknown = [c for c in value if c not in SCORING_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown BFCL categories {unknown}; known: {list(SCORING_CATEGORIES)}")
        bad = [c for c, n in value.items() if n != "all" and (isinstance(n, bool) or n < 1)]
        if bad:
            raise ValueError(f"case counts must be >= 1 or 'all': {bad}")
        return value

    @field_validator("bfcl_model")
    @classmethod
    def _check_bfcl_model(cls, value: str) -> str:
        # bfcl maps '_' in result folder names back to '/', and only FC names take the tools path.
        if "_" in value or not value.endswith(FC_SUFFIX):
            raise ValueError(f"bfcl_model '{value}' must end with '{FC_SUFFIX}' and contain no '_'")
        return value

    @property
    def api_model_name(self) -> str:
        """What bfcl sends as ``model``: its registry name without ``-FC``."""
        return self.bfcl_model[: -len(FC_SUFFIX)]


def load_config(path: str | os.PathLike[str], model_key: str) -> tuple[EvaluateConfig, ModelEntry]:
    config = load_section("evaluate", EvaluateConfig, path)
    if model_key not in config.models:
        raise ConfigError(f"{path}: evaluate.models has no '{model_key}' (known: {sorted(config.models)})")
    return config, config.models[model_key]


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class CategoryScore:
    accuracy: float
    correct: int
    total: int


def read_scores(score_root: Path, categories: Sequence[str]) -> dict[str, CategoryScore]:
    """First line of each ``BFCL_v4_<category>_score.json``: bfcl's accuracy / correct / total."""
    scores: dict[str, CategoryScore] = {}
    for category in categories:
        matches = sorted(score_root.rglob(f"{VERSION_PREFIX}_{category}_score.json"))
        if not matches:
            raise EvalError(f"bfcl wrote no score file for '{category}' under {score_root}")
        with matches[0].open(encoding="utf-8") as fh:
            first = fh.readline()
        try:
            head = json.loads(first)
            scores[category] = CategoryScore(float(head["accuracy"]), int(head["correct_count"]),
                                             int(head["total_count"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise EvalError(f"{matches[0]}: unreadable score header {first[:200]!r}") from exc
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
    return {"groups": groups, "overall": overall, "overall_weights": weights}


# ----------------------------------------------------------------------------- result files


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


def find_errors(expected_ids: Sequence[str], results: dict[str, Any]) -> list[str]:
    """Cases that did not produce a model answer: missing, or bfcl's recorded inference error.

    ``bfcl generate`` exits 0 even when every request failed (it writes the exception text as the
    case's result), so this is the only place such a run is caught.
    """
    problems = []
    for case_id in expected_ids:
        if case_id not in results:
            problems.append(f"{case_id}: no result written")
        elif isinstance(results[case_id], str) and results[case_id].startswith(ERROR_PREFIX):
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
        for name, arguments in result.items():
            yield name, arguments


@dataclass
class Validity:
    calls: int = 0
    valid: int = 0
    unknown_name: int = 0
    bad_json: int = 0
    schema_violation: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            # No call at all makes the share undefined; 1.0 would claim something never tested.
            "validity": self.valid / self.calls if self.calls else None,
            "tool_calls": self.calls, "valid_calls": self.valid, "unknown_name": self.unknown_name,
            "bad_json": self.bad_json, "schema_violation": self.schema_violation,
            "invalid_examples": self.examples,
        }


def check_validity(cases: Sequence[dict[str, Any]], results: dict[str, Any], max_examples: int = 5) -> Validity:
    """Check every returned call against the tools its case offered (the tools bfcl sent)."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    out = Validity()

    def bad(kind: str, message: str) -> None:
        setattr(out, kind, getattr(out, kind) + 1)
        if len(out.examples) < max_examples:
            out.examples.append(message)

    for case in cases:
        schemas = {t["name"]: t.get("parameters") or {"type": "object"} for t in case["tools"]}
        for name, raw in iter_calls(results.get(case["id"])):
            out.calls += 1
            where = f"{case['id']} {name}"
            if name not in schemas:
                bad("unknown_name", f"{where}: name not offered")
                continue
            try:
                arguments = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError as exc:
                bad("bad_json", f"{where}: arguments are not JSON ({exc.msg})")
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
        "categories": {c: {"accuracy": s.accuracy, "correct": s.correct, "total": s.total}
                       for c, s in scores.items()},
        **aggregate(scores),
        "validity": check_validity(cases, results).as_dict(),
        "seconds": round(seconds, 1),
    }


def write_outputs(metrics: dict[str, Any], metrics_dir: Path, model_key: str) -> tuple[Path, Path]:
    metrics_dir.mkdir(parents=True, exist_ok=True)
    json_path = metrics_dir / f"{model_key}.json"
    csv_path = metrics_dir / f"{model_key}_categories.csv"
    json_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["category", "accuracy", "correct", "total"])
        for category, s in metrics["categories"].items():
            writer.writerow([category, f"{s['accuracy']:.4f}", s["correct"], s["total"]])
    return json_path, csv_path


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(entry: ModelEntry, server: ServerSettings, port: int, served_name: str,
                   api_key: str) -> list[str]:
    cmd = [sys.executable, "-m", "serve", "--model", entry.path, "--format", entry.format,
           "--backend", server.backend, "--engine", server.engine, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", served_name, "--api-key", api_key,
           "--default-max-tokens", str(server.max_output_tokens)]
    if server.max_context is not None:
        cmd += ["--max-context", str(server.max_context)]
    if server.threads is not None:
        cmd += ["--threads", str(server.threads)]
    if server.backend == "transformers":
        if server.max_batch > 1:
            cmd += ["--max-batch", str(server.max_batch)]
        cmd += ["--prefix-cache-mb", f"{server.prefix_cache_mb:g}"]
    return cmd + list(server.extra_args)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EvalError(f"the server exited with code {proc.returncode} before becoming healthy; "
                            f"last lines of {log_path}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise EvalError(f"the server was not healthy at {url} after {timeout_s:.0f} s; last lines of "
                    f"{log_path}:\n{_tail(log_path)}")


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the server's whole process group, SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("server did not stop within %.0f s; killing it", grace_s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def running_server(cmd: list[str], port: int, timeout_s: float, log_path: Path) -> Iterator[str]:
    """Start the server in its own process group; yield its ``/v1`` base URL; always stop it."""
    shown = list(cmd)
    if "--api-key" in shown:
        shown[shown.index("--api-key") + 1] = "***"
    log.info("starting server: %s", " ".join(shown))
    with log_path.open("wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            start = time.monotonic()
            wait_healthy(proc, f"http://127.0.0.1:{port}/health", timeout_s, log_path)
            log.info("server healthy on port %d after %.1f s (log: %s)", port, time.monotonic() - start, log_path)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop_process_group(proc)
            log.info("server stopped")


# ----------------------------------------------------------------------------- the stage


def bfcl_python(config: EvaluateConfig) -> Path:
    python = Path(config.bfcl_venv) / "bin" / "python"
    if not python.is_file():
        raise EvalError(f"{python} not found: create the bfcl environment with `bash scripts/bfcl_venv.sh` "
                        "(`make` does it)")
    return python


def run_bfcl(config: EvaluateConfig, python: Path, bfcl_root: Path, base_url: str, api_key: str) -> dict[str, Any]:
    spec_path = bfcl_root / "spec.json"
    cases_path = bfcl_root / "cases.json"
    spec_path.write_text(json.dumps(dict(config.categories)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_DEFAULT_HEADERS")}
    env.update(BFCL_PROJECT_ROOT=str(bfcl_root.resolve()), OPENAI_BASE_URL=base_url, OPENAI_API_KEY=api_key,
               TOKENIZERS_PARALLELISM="false")
    runner = Path(__file__).with_name("bfcl_runner.py")
    cmd = [str(python), str(runner), "run", "--model", config.bfcl_model, "--spec", str(spec_path.resolve()),
           "--cases-out", str(cases_path.resolve()), "--num-threads", str(config.concurrency)]
    log_path = bfcl_root / "bfcl.log"
    log.info("running bfcl-eval (progress below; its full output: %s)", log_path)
    with log_path.open("wb") as log_fh:
        # stdout (bfcl's per-case chatter) to the log; stderr carries its tqdm progress bar.
        code = subprocess.call(cmd, env=env, stdout=log_fh, stdin=subprocess.DEVNULL)
    if code != 0:
        raise EvalError(f"bfcl-eval failed with exit code {code}; last lines of {log_path}:\n{_tail(log_path)}")
    doc = json.loads(cases_path.read_text(encoding="utf-8"))
    return doc


# Server counters worth a line in the stage's log (the whole scrape is kept beside bfcl's results).
_SERVER_COUNTERS = ("octupus_prompt_tokens_total", "octupus_prefilled_tokens_total",
                    "octupus_prefix_cache_reused_tokens_total", "octupus_completion_tokens_total")


def save_server_metrics(url: str, path: Path) -> None:
    """Keep the server's Prometheus scrape (token counts, prefix-cache reuse, latencies)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        log.warning("could not read the server's metrics at %s: %s", url, exc)
        return
    path.write_text(text, encoding="utf-8")
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _SERVER_COUNTERS:
            values[name.removeprefix("octupus_").removesuffix("_total")] = int(float(value))
    log.info("server counters: %s", json.dumps(values))


def evaluate(config: EvaluateConfig, model_key: str, entry: ModelEntry) -> dict[str, Any]:
    if not Path(entry.path).is_dir():
        raise EvalError(f"model folder {entry.path} does not exist (build it with `dvc repro`)")
    python = bfcl_python(config)
    bfcl_root = Path(config.work_dir) / model_key
    # Stale results would be merged into this run's files by bfcl's --run-ids update mode.
    shutil.rmtree(bfcl_root, ignore_errors=True)
    bfcl_root.mkdir(parents=True)
    api_key = secrets.token_hex(16)
    port = free_port()
    cmd = server_command(entry, config.server, port, config.api_model_name, api_key)
    start = time.monotonic()
    with running_server(cmd, port, config.server.startup_timeout_s, bfcl_root / "server.log") as base_url:
        cases_doc = run_bfcl(config, python, bfcl_root, base_url, api_key)
        save_server_metrics(base_url.removesuffix("/v1") + "/metrics", bfcl_root / "server_metrics.txt")
    seconds = time.monotonic() - start
    return build_metrics(model_key, entry, config, bfcl_root, cases_doc, seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_argparser(__doc__.strip().splitlines()[0])
    parser.add_argument("--model-key", required=True, help="a key of evaluate.models (e.g. base, stage2)")
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    # A terminated stage (CI timeout, `kill`) must stop its server too: route SIGTERM through the
    # same unwinding as Ctrl-C so the try/finally around the server runs.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        config, entry = load_config(args.params, args.model_key)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    log_config("evaluate", config)
    try:
        metrics = evaluate(config, args.model_key, entry)
    except EvalError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; the server was stopped and no metrics were written")
        return 130
    json_path, csv_path = write_outputs(metrics, Path(config.metrics_dir), args.model_key)
    validity = metrics["validity"]
    log.info("%s: overall %s over %d cases (subset=%s), validity %s (%d calls); wrote %s and %s", args.model_key,
             "n/a" if metrics["overall"] is None else f"{metrics['overall']:.4f}", metrics["cases"],
             metrics["subset"], validity["validity"], validity["tool_calls"], json_path, csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
