"""The whole pipeline on the smoke recipe, in a throw-away git repository, with the real bfcl-eval.

`dvc repro` runs every stage (raw -> filter -> reanswer -> base_model -> edit_tokenizer -> train_stage1 ->
train_stage2 -> evaluate@base, evaluate@stage2) on a tiny model; then a changed evaluation param
reruns only the evaluate stages; then V1 and V2 run as DVC experiments and `dvc metrics diff v1 v2`
shows the BFCL rows. Needs `.venv-bfcl` (`make test` creates it and sets OCTUPUS_REQUIRE_BFCL=1, so
that in CI a missing environment fails instead of skipping).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages import recipe
from stages.evaluation.dev import CATEGORIES as DEV_CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BFCL_VENV = ROOT / ".venv-bfcl"
MODELS = ("base", "stage2")
COPIED = ("stages", "serve", "toolcall", "scripts", "recipes")


def sh(repo: Path, *args: str, timeout: float = 900) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               DVC_NO_ANALYTICS="1", PYTHONPATH=str(repo), OCTUPUS_LOG_LEVEL="WARNING")
    proc = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (BFCL_VENV / "bin" / "python").is_file():
        if os.environ.get("OCTUPUS_REQUIRE_BFCL") == "1":
            pytest.fail(f"{BFCL_VENV} is missing although `make test` should have created it")
        pytest.skip(".venv-bfcl is missing: `make bfcl-venv` (make test does it)")
    repo = tmp_path_factory.mktemp("smoke") / "repo"
    repo.mkdir()
    for name in COPIED:
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = recipe.apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                    recipe.load_recipe("smoke", ROOT / "recipes"))
    params["evaluate"]["bfcl_venv"] = str(BFCL_VENV)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n/models/\n/checkpoints/\n/eval/\n/cache/\n__pycache__/\n")
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    with (repo / ".dvc" / "config").open("a") as fh:
        fh.write("[core]\n    analytics = false\n    check_update = false\n")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "smoke")
    return repo


@pytest.mark.timeout(1800)
def test_smoke_pipeline_end_to_end(repo: Path) -> None:
    start = time.monotonic()
    out = sh(repo, "dvc", "repro")
    assert ran(out) == {"raw", "filter", "reanswer", "base_model", "edit_tokenizer", "train_stage1", "train_stage2",
                        "evaluate@base", "evaluate@stage2", "data_card", "export_gguf"}
    card = json.loads((repo / "metrics" / "data.json").read_text())
    assert card["sets"]["stage2/train"]["all"]["rows"] > 0
    categories = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["categories"]
    calls = 0
    for key in MODELS:
        metrics = json.loads((repo / "metrics" / "bfcl" / f"{key}.json").read_text())
        assert metrics["model"] == key and metrics["subset"] is True and metrics["cases"] == len(categories)
        assert {c: m["total"] for c, m in metrics["categories"].items()} == categories
        assert all(0.0 <= m["accuracy"] <= 1.0 and m["correct"] <= m["total"] for m in metrics["categories"].values())
        assert set(metrics["groups"]) == {"non_live", "live", "irrelevance", "multi_turn"}
        assert 0.0 <= metrics["overall"] <= 1.0
        validity = metrics["validity"]
        calls += validity["tool_calls"]
        # Constrained decoding: every call a model returned is valid (None: it returned none).
        assert validity["validity"] in (1.0, None) and validity["valid_calls"] == validity["tool_calls"]
        plot = (repo / "metrics" / "bfcl" / f"{key}_categories.csv").read_text().splitlines()
        assert plot[0].startswith("category,accuracy") and len(plot) == len(categories) + 1
        # The server's counters, scraped before it stopped: multi_turn_base resends the conversation
        # at every step, so its later steps start from the prefix cache.
        scrape = (repo / "eval" / "bfcl" / key / "server_metrics.txt").read_text().splitlines()
        counters = {ln.split()[0]: float(ln.split()[1]) for ln in scrape if ln.startswith("octupus_")
                    and not ln.startswith(("octupus_request", "octupus_constraint", "octupus_grammar"))
                    and "{" not in ln.split()[0]}
        assert counters["octupus_prefilled_tokens_total"] > 0
        assert counters["octupus_prefix_cache_hits_total"] >= 1, counters
        assert counters["octupus_prefix_cache_reused_tokens_total"] > 0
        # ... and where its time went, also in the stage's metrics.
        server = metrics["server"]
        assert server["engine_prefill_seconds"] > 0 and server["engine_decode_steps"] > 0
        max_batch = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["server"]["max_batch"]
        assert server["engine_decode_steps"] <= server["engine_decode_rows"] <= max_batch * server["engine_decode_steps"]
        assert server["prefilled_tokens"] == counters["octupus_prefilled_tokens_total"]
        # How every answer ended, logged by the runner inside the real bfcl: one line per query at least.
        outcomes = (repo / "eval" / "bfcl" / key / "responses.jsonl").read_text().splitlines()
        assert len(outcomes) >= len(categories)
        assert {json.loads(o)["id"] for o in outcomes} >= {c["id"] for c in json.loads(
            (repo / "eval" / "bfcl" / key / "cases.json").read_text())["cases"]}
        assert all({"errors", "incomplete_calls", "text_answers"} <= set(m) for m in metrics["categories"].values())
        dev = json.loads((repo / "metrics" / "dev" / f"{key}.json").read_text())
        # The single-request categories, then the held-out environment sessions (one, played to its end).
        assert dev["model"] == key and list(dev["categories"]) == [*DEV_CATEGORIES, "sessions"]
        assert all(c["cases"] == 1 for c in dev["categories"].values())
        sessions = dev["categories"]["sessions"]
        assert sessions["turns"] >= 2 and 0.0 <= sessions["turn_accuracy"] <= 1.0
        assert sum(sessions["failures"].values()) == 1 - sessions["full_match"]
        assert ("call_minus_text" in dev["categories"]["simple"]) == (key == "stage2")
    assert calls > 0, "neither model returned a tool call: validity was never put to the test"
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "smoke results")

    # An evaluation param reruns the evaluate stages and nothing upstream.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["server"]["max_output_tokens"] = 40
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = sh(repo, "dvc", "status")
    assert "evaluate@base" in status and "evaluate@stage2" in status and "train_stage2" not in status
    # DVC's own decision, without spending two more evaluations on it (the GGUF stage compares
    # with the trained model's evaluation, so it follows; with no types it only writes its manifest).
    assert ran(sh(repo, "dvc", "repro", "--dry")) == {"evaluate@base", "evaluate@stage2", "export_gguf"}
    sh(repo, "git", "checkout", "params.yaml")

    # V1 and V2 as experiments: stage 1 and the base evaluation are shared, not rerun.
    for name in ("v1", "v2"):
        out = sh(repo, sys.executable, "-m", "stages.recipe", "exp", name)
        assert {"train_stage1", "evaluate@base", "base_model"}.isdisjoint(ran(out)), out[-3000:]
    shown = sh(repo, "dvc", "exp", "show", "--no-pager", "--md")
    assert "v1" in shown and "v2" in shown
    params_diff = sh(repo, "dvc", "params", "diff", "v1", "v2")
    assert "train_stage2.tool_format" in params_diff and "v1" in params_diff
    metrics_diff = sh(repo, "dvc", "metrics", "diff", "v1", "v2", "--all")
    assert "metrics/bfcl/stage2.json" in metrics_diff and "overall" in metrics_diff
    # The data card of each recipe side by side: V1 draws no ToolACE rows and twice the Hermes ones.
    target = "metrics/data_card/tools_offered.csv"
    out = sh(repo, "dvc", "plots", "diff", "v1", "v2", "--json", "--targets", target)
    (plot,) = json.JSONDecoder().raw_decode(out[out.index('{"data"'):])[0]["data"][target]
    assert sorted(plot["revisions"]) == ["v1", "v2"]
    by_rev: dict[str, list[tuple[str, str]]] = {}
    for row in plot["content"]["data"]["values"]:
        by_rev.setdefault(row["rev"], []).append((row["tools"], row["stage2_train"]))
    assert sorted(by_rev) == ["v1", "v2"] and by_rev["v1"] != by_rev["v2"]
    print(f"smoke pipeline: {time.monotonic() - start:.0f} s")
