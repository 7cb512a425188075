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
from stages.evaluation.metrics import build_metrics
from stages.evaluation.server import running_server, save_server_metrics, server_command


def evaluate(config: EvaluateConfig, model_key: str, entry: ModelEntry) -> dict[str, Any]:
    """Metrics of ``entry`` over ``config.categories``; bfcl's files stay in ``<work_dir>/<model_key>/``."""
    if not Path(entry.path).is_dir():
        raise EvalError(f"model folder {entry.path} does not exist (build it with `dvc repro`)")
    python = bfcl_python(config)
    bfcl_root = Path(config.work_dir) / model_key
    # Stale results would be merged into this run's files by bfcl's --run-ids update mode.
    shutil.rmtree(bfcl_root, ignore_errors=True)
    bfcl_root.mkdir(parents=True)
    api_key = secrets.token_hex(16)
    port = free_loopback_port()
    cmd = server_command(entry, config.server, port, config.api_model_name, api_key)
    start = time.monotonic()
    with running_server(cmd, port, config.server.startup_timeout_s, bfcl_root / "server.log") as base_url:
        cases_doc = run_bfcl(config, python, bfcl_root, base_url, api_key)
        save_server_metrics(base_url.removesuffix("/v1") + "/metrics", bfcl_root / "server_metrics.txt")
    seconds = time.monotonic() - start
    return build_metrics(model_key, entry, config, bfcl_root, cases_doc, seconds)
