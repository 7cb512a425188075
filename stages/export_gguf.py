"""Stage ``export_gguf``: the trained model as GGUF files, each checked against the fp32 model.

    python -m stages.export_gguf [--params params.yaml]

GGUF is the format users load into llama.cpp, Ollama and LM Studio (and this project's own
``python -m serve --backend llamacpp``). For each type in ``export_gguf.types`` (``f32``, ``f16``,
``bf16``, ``q8_0``, or a ``llama-quantize`` type such as ``q4_k_m``), ``scripts/export_gguf.sh``
converts the trained model (``evaluate.models.stage2``) with the llama.cpp that ``make llamacpp-venv``
builds, into ``<out_dir>/<model folder>-<type>.gguf``.

With ``agreement: true`` every file is then asked the development evaluation (the evaluate stage's
cases and server caps, ``max_batch`` sequences at once; its sessions too with ``sessions: true``)
through ``python -m serve --backend llamacpp``, and its answers
are compared with the ones the evaluate stage got from the same model (``<evaluate.work_dir>/stage2/dev``;
on the CPU default the model's f32 GGUF through the llamacpp backend, i.e. the fp32 weights, so
the f32 file's agreement there shows only batch-order rounding; with ``evaluate.server.backend:
transformers`` fp32 through torch; bf16 through vLLM on the GPU recipe), on the same cases (checked):

- ``cases_identical``: single-request cases answered with the same calls and arguments, or the
  same text; ``calls_identical``: the same calls (text answers count when both answered in text);
  ``decisions_same``: the same choice between calling and answering in text;
- ``turns_same``: session turns that called the same functions and ended the same way;
- ``failed_requests``: cases where either side got no answer (never counted as agreeing).

Writes ``<out_dir>/manifest.json`` (the files, their sizes and sha256), the answers under
``<work_dir>/<type>/``, and ``<metrics>``: per type the size, the export time, the development
summary next to the reference's, and the agreement. ``types: []`` (the CPU default, which has no
llama.cpp build) writes an empty manifest and metrics and needs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from stages.config import ConfigError, StrictModel, load_section, log_config, setup_logging, stage_argparser
from stages.evaluation.gguf import export, llamacpp_env

log = logging.getLogger("stages.export_gguf")

# The model exported and compared: this key of evaluate.models (dvc.yaml names its folders).
REFERENCE = "stage2"


class ExportConfig(StrictModel):
    types: list[str] = Field(description="GGUF types to write: f32, f16, bf16, q8_0, or llama-quantize types")
    agreement: bool = Field(description="ask each file the development evaluation and compare")
    sessions: bool = Field(description="also play the development sessions")
    llamacpp_venv: str
    threads: int | None = Field(ge=1, description="llama.cpp threads (null: every core)")
    out_dir: str
    work_dir: str
    metrics: str


# ----------------------------------------------------------------------------- agreement


def _failed(answer: dict[str, Any]) -> bool:
    """A request that got no answer (the server refused it or went away): never counted as agreeing."""
    return answer.get("finish") == "error"


def answer_agreement(reference: list[dict[str, Any]], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """How far ``answers`` (rows of ``answers.jsonl``) agree with ``reference`` on the same case ids."""
    by_id = {row["id"]: row["answer"] for row in reference}
    missing = [row["id"] for row in answers if row["id"] not in by_id]
    if missing or len(answers) != len(by_id):
        raise ValueError(f"the answers and the reference cover different cases ({len(answers)} vs {len(by_id)}; "
                         f"not in the reference: {missing[:5]})")
    identical = calls = decisions = errors = 0
    for row in answers:
        mine, theirs = row["answer"], by_id[row["id"]]
        if _failed(mine) or _failed(theirs):
            errors += 1
            continue
        same_calls = mine["calls"] == theirs["calls"]
        calls += same_calls
        decisions += bool(mine["calls"]) == bool(theirs["calls"])
        identical += same_calls and (mine["content"] or "") == (theirs["content"] or "")
    n = len(answers)
    return {"cases": n, "cases_identical": identical / n if n else None, "calls_identical": calls / n if n else None,
            "decisions_same": decisions / n if n else None, "failed_requests": errors}


def session_agreement(reference: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Turns of the same sessions that called the same functions and ended the same way (a turn that
    ended on a failed request never counts as the same)."""
    by_id = {row["id"]: row["outcome"]["turns"] for row in reference}
    if sorted(by_id) != sorted(row["id"] for row in sessions):
        raise ValueError("the sessions and the reference cover different sessions")
    turns = same = 0
    for row in sessions:
        for mine, theirs in zip(row["outcome"]["turns"], by_id[row["id"]], strict=True):
            turns += 1
            same += (mine["calls"] == theirs["calls"] and mine["failure"] == theirs["failure"]
                     and "error" not in (mine["failure"], theirs["failure"]))
    return {"turns": turns, "turns_same": same / turns if turns else None}


def same_cases(reference_dir: Path, work: Path, sessions: bool = True) -> None:
    """The GGUF was asked exactly the cases (and sessions) the reference was (ids are positions)."""
    if (reference_dir / "cases.jsonl").read_bytes() != (work / "cases.jsonl").read_bytes():
        raise ValueError(f"the development cases differ from {reference_dir / 'cases.jsonl'} (the generator or "
                         "evaluate.dev changed since the evaluate stage ran: run it again)")
    if not sessions:
        return
    scripts = [[{k: v for k, v in row.items() if k != "outcome"} for row in read_jsonl(d / "sessions.jsonl")]
               for d in (reference_dir, work)]
    if scripts[0] != scripts[1]:
        raise ValueError(f"the development sessions differ from {reference_dir / 'sessions.jsonl'}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- export and ask


def sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def ask_dev(gguf: Path, entry: Any, evaluate: Any, config: ExportConfig, work: Path) -> dict[str, Any]:
    """The development evaluation of one GGUF through our server's llamacpp backend."""
    from serve.process import ServerStartError, free_loopback_port, running_server
    from stages.evaluation.dev import build_devset, generate_and_score, play_and_record, summarize
    from stages.evaluation.server import server_command

    dev = evaluate.dev
    api_key, port, name = secrets.token_hex(16), free_loopback_port(), "gguf"
    # The evaluate stage's server command with this backend: the same format, engine and caps; the
    # evaluate stage's own extra flags are for its backend (vLLM on the GPU recipe), not this one.
    server = evaluate.server.model_copy(update={"backend": "llamacpp", "threads": config.threads,
                                                "extra_args": ["--gguf", str(gguf)]})
    cmd = server_command(entry, server, port, name, api_key)
    env = llamacpp_env(config.llamacpp_venv)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with running_server(cmd, port, work / "server.log", server.startup_timeout_s, env=env) as proc:
            base_url = proc.base_url + "/v1"
            scored = generate_and_score(build_devset(dev.cases_per_category, dev.seed), base_url, api_key, name,
                                        dev.max_output_tokens, evaluate.concurrency, work)
            sessions = None
            if config.sessions:
                sessions = play_and_record(dev.sessions, dev.seed, base_url, api_key, name, dev.max_output_tokens,
                                           evaluate.concurrency, work)
    except ServerStartError as exc:
        raise ConfigError(str(exc)) from exc
    return summarize(scored, None, sessions)["summary"]


def run(config: ExportConfig, params: str) -> dict[str, Any]:
    from stages.evaluation.config import load_config

    evaluate, entry = load_config(params, REFERENCE)
    out_dir, work_dir = Path(config.out_dir), Path(config.work_dir)
    reference_dir = Path(evaluate.work_dir) / REFERENCE / "dev"
    reference_cases = read_jsonl(reference_dir / "answers.jsonl")
    reference_sessions = read_jsonl(reference_dir / "sessions.jsonl")
    if config.types and config.agreement and not reference_cases:
        raise ConfigError(f"no reference answers in {reference_dir}: the evaluate stage of '{REFERENCE}' "
                          "writes them (run it first, with evaluate.dev.cases_per_category > 0)")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    work_dir.mkdir(parents=True)
    files, per_type = [], {}
    for gguf_type in config.types:
        out = out_dir / f"{Path(entry.path).name}-{gguf_type}.gguf"
        start = time.monotonic()
        export(entry.path, out, gguf_type, config.llamacpp_venv, config.threads)
        exported = time.monotonic() - start
        files.append({"file": out.name, "type": gguf_type, "bytes": out.stat().st_size, "sha256": sha256(out)})
        result: dict[str, Any] = {"megabytes": round(out.stat().st_size / 2**20, 1),
                                  "export_seconds": round(exported, 1)}
        log.info("%s: wrote %s (%.1f MB) in %.0f s", gguf_type, out, result["megabytes"], exported)
        if config.agreement:
            start = time.monotonic()
            work = work_dir / gguf_type
            result["dev"] = ask_dev(out, entry, evaluate, config, work)
            result["dev_seconds"] = round(time.monotonic() - start, 1)
            same_cases(reference_dir, work, config.sessions)
            result["agreement"] = answer_agreement(reference_cases, read_jsonl(work / "answers.jsonl"))
            if reference_sessions and config.sessions:
                result["agreement"].update(session_agreement(reference_sessions, read_jsonl(work / "sessions.jsonl")))
            log.info("%s: development %s; agreement with fp32 %s", gguf_type, json.dumps(result["dev"]),
                     json.dumps(result["agreement"]))
        per_type[gguf_type] = result
    (out_dir / "manifest.json").write_text(json.dumps({"model": entry.path, "files": files}, indent=2) + "\n",
                                           encoding="utf-8")
    metrics: dict[str, Any] = {"model": entry.path, "types": per_type}
    if per_type and config.agreement:
        # What the answers are compared with: the evaluate stage's server (transformers in fp32 on the
        # CPU default; the GPU recipe's is vLLM in bf16).
        metrics["reference"] = {"backend": evaluate.server.backend, "answers": str(reference_dir)}
        reference_metrics = Path(evaluate.dev.metrics_dir) / f"{REFERENCE}.json"
        if reference_metrics.is_file():
            metrics["reference_dev"] = json.loads(reference_metrics.read_text(encoding="utf-8"))["summary"]
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = stage_argparser(__doc__.strip().splitlines()[0]).parse_args(argv)
    setup_logging()
    try:
        config = load_section("export_gguf", ExportConfig, args.params)
        log_config("export_gguf", config)
        metrics = run(config, args.params)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except json.JSONDecodeError as exc:
        log.error("a development answers file is not JSON lines: %s", exc)
        return 1
    except ValueError as exc:  # the answers do not match the reference's cases (params changed under it)
        log.error("comparing with the reference answers: %s", exc)
        return 1
    path = Path(config.metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s (%d GGUF files)", path, len(metrics["types"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
