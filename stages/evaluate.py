"""Stage ``evaluate``: BFCL (bfcl-eval) on one model, through the project's own server.

    python -m stages.evaluate --model-key base [--params params.yaml]

Reads ``evaluate.models.<key>`` ({path, format}) and the shared settings of the ``evaluate``
section, starts ``python -m serve`` for that model on a free loopback port, waits for ``/health``,
runs bfcl-eval's generation (Responses API path, a ``gpt-*-FC`` registry name) and partial
evaluation inside ``.venv-bfcl`` (``stages/bfcl_runner.py``), stops the server (also on errors,
Ctrl-C and SIGTERM) and writes:

- ``<metrics_dir>/<key>.json``: accuracy / correct / total per category, BFCL's group scores and
  overall score over the categories run (``subset: true`` unless every scoring category ran in
  full), and ``validity``: the share of returned tool calls whose name was offered and whose
  arguments parse and validate against the offered schema;
- ``<metrics_dir>/<key>_categories.csv``: one row per category, for a DVC bar chart;
- ``<dev.metrics_dir>/<key>.json``: the development evaluation (held-out synthetic functions in
  BFCL-like categories, :mod:`stages.evaluation.dev`), asked of the same server before BFCL —
  the numbers training decisions are made on, so that BFCL stays unseen.

bfcl's raw result and score files stay under ``<work_dir>/<key>/``. The work is done in
``stages/evaluation/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from stages.config import ConfigError, log_config, setup_logging, stage_argparser
from stages.evaluation import EvalError
from stages.evaluation.config import load_config
from stages.evaluation.metrics import write_dev_metrics, write_outputs
from stages.evaluation.run import evaluate

log = logging.getLogger("stages.evaluate")


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
        metrics, dev_metrics = evaluate(config, args.model_key, entry)
    except EvalError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; the server was stopped and no metrics were written")
        return 130
    json_path, csv_path = write_outputs(metrics, Path(config.metrics_dir), args.model_key)
    if dev_metrics is not None:
        dev_path = write_dev_metrics(dev_metrics, Path(config.dev.metrics_dir), args.model_key)
        log.info("%s: development evaluation %s; wrote %s", args.model_key, json.dumps(dev_metrics["summary"]),
                 dev_path)
    validity = metrics["validity"]
    log.info("%s: overall %s over %d cases (subset=%s), validity %s (%d calls); wrote %s and %s", args.model_key,
             "n/a" if metrics["overall"] is None else f"{metrics['overall']:.4f}", metrics["cases"],
             metrics["subset"], validity["validity"], validity["tool_calls"], json_path, csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
