"""One model's evaluation: serve it, run bfcl against it, and compute the metrics."""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from serve.process import free_loopback_port
from stages.evaluation import EvalError
from stages.evaluation.bfcl import bfcl_python, run_bfcl
from stages.evaluation.config import EvaluateConfig, ModelEntry
from stages.evaluation.dev import (
    build_devset,
    decision_margins,
    generate_and_score,
    margin_subset,
    play_and_record,
    summarize,
)
from stages.evaluation.gguf import export, llamacpp_env
from stages.evaluation.metrics import build_metrics
from stages.evaluation.server import running_server, save_server_metrics, server_command


def evaluate(config: EvaluateConfig, model_key: str, entry: ModelEntry) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """BFCL metrics of ``entry`` over ``config.categories`` (bfcl's files stay in
    ``<work_dir>/<model_key>/``), and the development evaluation's (None when it is off)."""
    if not Path(entry.path).is_dir():
        raise EvalError(f"model folder {entry.path} does not exist (build it with `dvc repro`)")
    python = bfcl_python(config)
    bfcl_root = Path(config.work_dir) / model_key
    # Stale results would be merged into this run's files by bfcl's --run-ids update mode.
    shutil.rmtree(bfcl_root, ignore_errors=True)
    bfcl_root.mkdir(parents=True)
    api_key = secrets.token_hex(16)
    port = free_loopback_port()
    server, env = config.server, None
    start = time.monotonic()
    gguf_dir = Path(config.work_dir) / f"{model_key}-gguf"
    if server.backend == "llamacpp":
        # llama.cpp serves a GGUF of the model, written for this run and removed after it.
        gguf = gguf_dir / f"{Path(entry.path).name}-{server.gguf_type}.gguf"
        export(entry.path, gguf, server.gguf_type, server.llamacpp_venv, server.threads)
        server = server.model_copy(update={"extra_args": ["--gguf", str(gguf), *server.extra_args]})
        env = llamacpp_env(server.llamacpp_venv)
    cmd = server_command(entry, server, port, config.api_model_name, api_key)
    dev = config.dev
    dev_cases = dev_scored = dev_sessions = None
    with running_server(cmd, port, server.startup_timeout_s, bfcl_root / "server.log", env=env) as base_url:
        if dev.cases_per_category or dev.sessions:
            dev_cases = build_devset(dev.cases_per_category, dev.seed)
            dev_scored = generate_and_score(dev_cases, base_url, api_key, config.api_model_name,
                                            dev.max_output_tokens, config.concurrency, bfcl_root / "dev")
            dev_sessions = play_and_record(dev.sessions, dev.seed, base_url, api_key, config.api_model_name,
                                           dev.max_output_tokens, config.concurrency, bfcl_root / "dev")
        dev_seconds = time.monotonic() - start
        cases_doc = run_bfcl(config, python, bfcl_root, base_url, api_key)
        server_counters = save_server_metrics(base_url.removesuffix("/v1") + "/metrics",
                                              bfcl_root / "server_metrics.txt")
    shutil.rmtree(gguf_dir, ignore_errors=True)
    seconds = time.monotonic() - start - dev_seconds
    metrics = build_metrics(model_key, entry, config, bfcl_root, cases_doc, seconds)
    # Where the server's time went over the whole stage (development cases and BFCL): tokens,
    # prefix-cache reuse, and seconds in prefill and in decode steps (steps x mean batch = rows).
    metrics["server"] = server_counters
    dev_metrics = None
    if dev_cases is not None and dev_scored is not None:
        margins_start = time.monotonic()
        margins = None
        if entry.format == "octupus" and dev.margin_cases_per_category:
            # After the server stopped: the forward passes would otherwise compete with it for the cores.
            margins = decision_margins(entry.path, margin_subset(dev_cases, dev.margin_cases_per_category))
        dev_metrics = {"model": model_key, "format": entry.format, **summarize(dev_scored, margins, dev_sessions),
                       "seconds": round(dev_seconds + time.monotonic() - margins_start, 1)}
    return metrics, dev_metrics
