"""bfcl-eval's generation and evaluation, run inside its own environment (``.venv-bfcl``).

``stages/bfcl_runner.py`` runs under that interpreter; this side writes its spec, starts it
against a served model and reads back the list of cases it ran.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from serve.process import log_tail
from stages.evaluation import EvalError
from stages.evaluation.config import EvaluateConfig

log = logging.getLogger(__name__)

RUNNER = Path(__file__).parents[1] / "bfcl_runner.py"


def bfcl_python(config: EvaluateConfig) -> Path:
    python = Path(config.bfcl_venv) / "bin" / "python"
    if not python.is_file():
        raise EvalError(f"{python} not found: create the bfcl environment with `bash scripts/bfcl_venv.sh` "
                        "(`make` does it)")
    return python


def run_bfcl(config: EvaluateConfig, python: Path, bfcl_root: Path, base_url: str, api_key: str) -> dict[str, Any]:
    """Generate and score ``config.categories`` against ``base_url``; returns the runner's case list
    (``{"available": {category: count}, "cases": [{"id", "category", "tools"}]}``)."""
    spec_path = bfcl_root / "spec.json"
    cases_path = bfcl_root / "cases.json"
    spec_path.write_text(json.dumps(dict(config.categories)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_DEFAULT_HEADERS")}
    env.update(BFCL_PROJECT_ROOT=str(bfcl_root.resolve()), OPENAI_BASE_URL=base_url, OPENAI_API_KEY=api_key,
               TOKENIZERS_PARALLELISM="false")
    cmd = [str(python), str(RUNNER), "run", "--model", config.bfcl_model, "--spec", str(spec_path.resolve()),
           "--cases-out", str(cases_path.resolve()), "--num-threads", str(config.concurrency)]
    log_path = bfcl_root / "bfcl.log"
    log.info("running bfcl-eval (progress below; its full output: %s)", log_path)
    with log_path.open("wb") as log_fh:
        # stdout (bfcl's per-case chatter) to the log; stderr carries its tqdm progress bar.
        code = subprocess.call(cmd, env=env, stdout=log_fh, stdin=subprocess.DEVNULL)
    if code != 0:
        raise EvalError(f"bfcl-eval failed with exit code {code}; last lines of {log_path}:\n{log_tail(log_path)}")
    return json.loads(cases_path.read_text(encoding="utf-8"))

