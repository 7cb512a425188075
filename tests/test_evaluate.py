"""Stage evaluate: metric computation on bfcl-shaped fixture files, config refusals, and (slow) the
real bfcl-eval against the project's server on a tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from serve.process import free_loopback_port
from stages import evaluate as ev
from stages.config import ConfigError
from stages.evaluation import EvalError
from stages.evaluation import config as ev_config
from stages.evaluation import metrics as ev_metrics
from stages.evaluation import results as ev_results
from stages.evaluation import scores as ev_scores
from stages.evaluation import server as ev_server

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4-turbo-2024-04-09-FC"

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}
CD_TOOL = {"type": "function", "name": "cd", "description": "Change directory.",
           "parameters": {"type": "object", "properties": {"folder": {"type": "string"}}, "required": ["folder"]}}


def evaluate_section(**overrides: object) -> dict:
    section = {
        "models": {"base": {"path": "models/base", "format": "hermes"},
                   "stage2": {"path": "models/stage2", "format": "octupus"}},
        "categories": {"simple_python": 2, "irrelevance": 1, "multi_turn_base": 1},
        "bfcl_model": MODEL,
        "bfcl_venv": ".venv-bfcl",
        "work_dir": "eval/bfcl",
        "metrics_dir": "metrics/bfcl",
        "concurrency": 2,
        "server": {"backend": "transformers", "engine": "llguidance", "max_output_tokens": 64, "max_text_tokens": 0,
                   "max_context": None, "threads": None, "max_batch": 2, "prefix_cache_mb": 256,
                   "startup_timeout_s": 120,
                   "extra_args": []},
        "dev": {"cases_per_category": 0, "margin_cases_per_category": 0, "seed": 0, "max_output_tokens": 32,
                "metrics_dir": "metrics/dev"},
    }
    section.update(overrides)
    return section


def write_params(path: Path, section: dict) -> Path:
    path.write_text(yaml.safe_dump({"evaluate": section}), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def fake_bfcl_run(root: Path, results: dict[str, list[dict]], scores: dict[str, tuple[int, int]],
                  failed: dict[str, list[tuple[str, str]]] | None = None) -> None:
    """bfcl's on-disk layout: result/<model>/<group>/BFCL_v4_<cat>_result.json and score/... files.

    ``failed``: per category, (case id, bfcl error_type) of each failed case (default: the last
    ``total - correct`` case ids, as wrong_count)."""
    group = {"simple_python": "non_live", "irrelevance": "non_live", "live_simple": "live",
             "multi_turn_base": "multi_turn"}
    for category, rows in results.items():
        write_jsonl(root / "result" / MODEL / group[category] / f"BFCL_v4_{category}_result.json", rows)
    for category, (correct, total) in scores.items():
        header = {"accuracy": correct / total, "correct_count": correct, "total_count": total}
        fails = (failed or {}).get(category) or [(f"{category}_{i}", "simple_function_checker:wrong_count")
                                                 for i in range(correct, total)]
        write_jsonl(root / "score" / MODEL / group[category] / f"BFCL_v4_{category}_score.json",
                    [header, *({"id": i, "valid": False, "error": ["x"], "error_type": t} for i, t in fails)])


# ----------------------------------------------------------------------------- aggregation


def score(correct: int, total: int) -> ev_scores.CategoryScore:
    return ev_scores.CategoryScore(correct / total, correct, total)


def test_overall_reweights_bfcl_groups_over_categories_run():
    scores = {
        "simple_python": score(3, 4), "multiple": score(1, 2),      # non_live: mean(0.75, 0.5)
        "live_simple": score(1, 4), "live_multiple": score(3, 4),   # live: count-weighted (4/8)
        "irrelevance": score(1, 1), "live_irrelevance": score(1, 2),  # irrelevance: mean(1, 0.5)
        "multi_turn_base": score(0, 5),
    }
    out = ev_scores.aggregate(scores)
    assert out["groups"] == pytest.approx({"non_live": 0.625, "live": 0.5, "irrelevance": 0.75, "multi_turn": 0.0})
    # 10/10/10/30 of the 100 BFCL points are present (agentic's 40 are not): renormalised to 60.
    assert out["overall_weights"] == pytest.approx({"non_live": 1 / 6, "live": 1 / 6, "irrelevance": 1 / 6,
                                                    "multi_turn": 0.5})
    assert out["overall"] == pytest.approx((0.625 + 0.5 + 0.75) / 6)


def test_live_group_is_weighted_by_case_count_and_simple_languages_are_averaged_first():
    scores = {"live_simple": score(10, 10), "live_multiple": score(0, 30),
              "simple_python": score(1, 1), "simple_java": score(0, 1), "parallel": score(1, 1)}
    groups = ev_scores.aggregate(scores)["groups"]
    assert groups["live"] == pytest.approx(10 / 40)
    # non_live = mean(simple = mean(python 1, java 0), parallel 1)
    assert groups["non_live"] == pytest.approx(0.75)


def test_only_irrelevance_run_gives_that_group_as_overall():
    out = ev_scores.aggregate({"irrelevance": score(2, 3)})
    assert out["groups"] == pytest.approx({"irrelevance": 2 / 3})
    assert out["overall"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- validity


def test_validity_counts_unknown_names_bad_json_and_schema_violations():
    cases = [{"id": "simple_python_0", "category": "simple_python", "tools": [WEATHER_TOOL]},
             {"id": "irrelevance_0", "category": "irrelevance", "tools": [WEATHER_TOOL]},
             {"id": "multi_turn_base_0", "category": "multi_turn_base", "tools": [CD_TOOL]}]
    results = {
        "simple_python_0": [{"get_weather": '{"city": "Paris", "days": 2}'},   # valid
                            {"get_weather": '{"days": 2}'},                    # missing required
                            {"get_wether": '{"city": "Rome"}'}],               # name not offered
        "irrelevance_0": "I cannot help with that.",                           # text: no call
        # multi-turn: turns -> steps -> calls, and a text step
        "multi_turn_base_0": [[[{"cd": '{"folder": "docs"}'}], "done"], [[{"cd": '{"folder": 3'}]]],
    }
    v = ev_results.check_validity(cases, results).as_dict()
    assert (v["tool_calls"], v["valid_calls"]) == (5, 2)
    assert (v["unknown_name"], v["bad_json"], v["schema_violation"]) == (1, 1, 1)
    assert v["validity"] == pytest.approx(0.4)
    assert any("get_wether" in e for e in v["invalid_examples"])


def test_validity_is_undefined_without_any_call():
    cases = [{"id": "irrelevance_0", "category": "irrelevance", "tools": [WEATHER_TOOL]}]
    v = ev_results.check_validity(cases, {"irrelevance_0": "no"}).as_dict()
    assert v["tool_calls"] == 0 and v["validity"] is None


# ----------------------------------------------------------------------------- metrics from files


def test_build_metrics_and_outputs_from_bfcl_files(tmp_path: Path):
    root = tmp_path / "bfcl"
    fake_bfcl_run(root, results={
        "simple_python": [{"id": "simple_python_0", "result": [{"get_weather": '{"city": "Oslo"}'}]},
                          {"id": "simple_python_1", "result": "It is sunny."}],
        "irrelevance": [{"id": "irrelevance_0", "result": "no tool fits"}],
    }, scores={"simple_python": (1, 2), "irrelevance": (1, 1)})
    cases_doc = {"available": {"simple_python": 400, "irrelevance": 240},
                 "cases": [{"id": "simple_python_0", "category": "simple_python", "tools": [WEATHER_TOOL]},
                           {"id": "simple_python_1", "category": "simple_python", "tools": [WEATHER_TOOL]},
                           {"id": "irrelevance_0", "category": "irrelevance", "tools": [WEATHER_TOOL]}]}
    section = evaluate_section(categories={"simple_python": 2, "irrelevance": 1})
    config = ev_config.EvaluateConfig.model_validate(section)
    metrics = ev_metrics.build_metrics("base", config.models["base"], config, root, cases_doc, seconds=12.34)
    assert metrics["subset"] is True
    no_log = {"incomplete_calls": 0, "text_answers": 0, "passes_from_incomplete_calls": 0}
    assert metrics["categories"] == {
        "simple_python": {"accuracy": 0.5, "correct": 1, "total": 2,
                          "errors": {"simple_function_checker:wrong_count": 1}, **no_log},
        "irrelevance": {"accuracy": 1.0, "correct": 1, "total": 1, "errors": {}, **no_log}}
    assert metrics["overall"] == pytest.approx(0.75)
    assert metrics["validity"]["validity"] == 1.0 and metrics["validity"]["tool_calls"] == 1

    json_path, csv_path = ev_metrics.write_outputs(metrics, tmp_path / "metrics", "base")
    assert json.loads(json_path.read_text())["categories"]["irrelevance"]["total"] == 1
    assert csv_path.read_text().splitlines() == ["category,accuracy,correct,total,incomplete_calls",
                                                 "simple_python,0.5000,1,2,0", "irrelevance,1.0000,1,1,0"]


def test_error_types_and_answers_cut_inside_a_call_are_counted(tmp_path: Path):
    root = tmp_path / "bfcl"
    ids = {"simple_python": ["simple_python_0", "simple_python_1", "simple_python_2"],
           "irrelevance": ["irrelevance_0", "irrelevance_1", "irrelevance_2"]}
    fake_bfcl_run(root, results={
        "simple_python": [{"id": "simple_python_0", "result": [{"get_weather": '{"city": "Oslo"}'}]},
                          {"id": "simple_python_1", "result": [{"get_weather": '{"city": "CA"}'}]},
                          {"id": "simple_python_2", "result": ""}],
        "irrelevance": [{"id": "irrelevance_0", "result": "I can't."}, {"id": "irrelevance_1", "result": ""},
                        {"id": "irrelevance_2", "result": [{"get_weather": '{"city": "Oslo"}'}]}],
    }, scores={"simple_python": (1, 3), "irrelevance": (2, 3)}, failed={
        "simple_python": [("simple_python_1", "value_error:string"), ("simple_python_2", "simple_function_checker:wrong_count")],
        "irrelevance": [("irrelevance_2", "irrelevance_error:decoder_success")]})
    # How each answer ended, as stages/bfcl_runner.py logs it: irrelevance_1 and simple_python_2
    # were cut inside a call (nothing returned, status incomplete); irrelevance_0 is a real text answer.
    write_jsonl(root / "responses.jsonl", [
        {"id": "simple_python_0", "status": "completed", "reason": None, "calls": 1, "incomplete_calls": 0, "text_chars": 0},
        {"id": "simple_python_1", "status": "completed", "reason": None, "calls": 1, "incomplete_calls": 0, "text_chars": 0},
        {"id": "simple_python_2", "status": "incomplete", "reason": "max_output_tokens", "calls": 0,
         "incomplete_calls": 0, "text_chars": 0},
        {"id": "irrelevance_0", "status": "completed", "reason": None, "calls": 0, "incomplete_calls": 0, "text_chars": 8},
        {"id": "irrelevance_1", "status": "incomplete", "reason": "max_output_tokens", "calls": 1,
         "incomplete_calls": 1, "text_chars": 0},
        {"id": "irrelevance_2", "status": "completed", "reason": None, "calls": 1, "incomplete_calls": 0, "text_chars": 0},
    ])
    cases_doc = {"available": {"simple_python": 400, "irrelevance": 240},
                 "cases": [{"id": i, "category": c, "tools": [WEATHER_TOOL]} for c, v in ids.items() for i in v]}
    config = ev_config.EvaluateConfig.model_validate(evaluate_section(categories={"simple_python": 3, "irrelevance": 3}))
    metrics = ev_metrics.build_metrics("stage2", config.models["base"], config, root, cases_doc, seconds=1.0)
    simple, irrelevance = metrics["categories"]["simple_python"], metrics["categories"]["irrelevance"]
    assert simple["errors"] == {"simple_function_checker:wrong_count": 1, "value_error:string": 1}
    assert (simple["incomplete_calls"], simple["passes_from_incomplete_calls"]) == (1, 0)
    assert irrelevance["errors"] == {"irrelevance_error:decoder_success": 1}
    # 2 of 3 passed, but one of them only because its call was cut: one real abstention
    assert (irrelevance["correct"], irrelevance["incomplete_calls"]) == (2, 1)
    assert (irrelevance["passes_from_incomplete_calls"], irrelevance["text_answers"]) == (1, 1)
    assert metrics["single_turn_mean"] == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_a_text_answer_cut_by_the_cap_is_not_an_incomplete_call():
    from stages.evaluation.results import ended_inside_a_call

    assert not ended_inside_a_call({"status": "incomplete", "calls": 0, "incomplete_calls": 0, "text_chars": 300})
    assert ended_inside_a_call({"status": "incomplete", "calls": 0, "incomplete_calls": 0, "text_chars": 0})
    assert ended_inside_a_call({"status": "incomplete", "calls": 2, "incomplete_calls": 1, "text_chars": 0})
    assert not ended_inside_a_call({"status": "completed", "calls": 0, "incomplete_calls": 0, "text_chars": 0})


def test_inference_errors_recorded_by_bfcl_fail_the_stage(tmp_path: Path):
    # What bfcl writes when e.g. the server omits usage: exit code 0, the exception as the result.
    root = tmp_path / "bfcl"
    fake_bfcl_run(root, results={"simple_python": [
        {"id": "simple_python_0", "result": "Error during inference: 'NoneType' object has no attribute "
                                            "'input_tokens'", "traceback": "..."}]},
        scores={"simple_python": (0, 1)})
    cases_doc = {"available": {"simple_python": 400},
                 "cases": [{"id": "simple_python_0", "category": "simple_python", "tools": [WEATHER_TOOL]},
                           {"id": "simple_python_1", "category": "simple_python", "tools": [WEATHER_TOOL]}]}
    config = ev_config.EvaluateConfig.model_validate(evaluate_section(categories={"simple_python": 2}))
    with pytest.raises(EvalError, match=r"2 of 2 BFCL cases failed") as info:
        ev_metrics.build_metrics("base", config.models["base"], config, root, cases_doc, seconds=1.0)
    assert "input_tokens" in str(info.value) and "simple_python_1: no result written" in str(info.value)


def test_a_multi_turn_history_refused_for_the_models_unanswered_call_is_a_failed_case(tmp_path: Path):
    """bfcl goes on without a result when it cannot decode the model's (cut) call; the server refuses
    that history as OpenAI's API does. The case fails (bfcl scores it), the stage does not."""
    from stages.evaluation.results import find_errors, model_caused

    refused = ("Error during inference: Error code: 400 - messages[2]: tool calls ['call_1'] have no tool "
               "message answering them")
    assert model_caused("multi_turn_base_0", refused)
    assert not model_caused("simple_python_0", refused)  # only a multi-turn history can hold one
    assert not model_caused("multi_turn_base_1", "Error during inference: 'NoneType' object has no attribute")
    results = {"multi_turn_base_0": refused, "multi_turn_base_1": "Error during inference: boom"}
    assert find_errors(["multi_turn_base_0", "multi_turn_base_1"], results) == [
        "multi_turn_base_1: Error during inference: boom"]


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("category", ["web_search_base", "memory_kv", "memory_vector"])
def test_internet_categories_are_refused_with_a_clear_error(tmp_path: Path, category: str):
    params = write_params(tmp_path / "params.yaml", evaluate_section(categories={"simple_python": 1, category: 2}))
    with pytest.raises(ConfigError, match="need the internet"):
        ev_config.load_config(params, "base")
    # and through the command line: exit code 2, before anything starts
    assert ev.main(["--model-key", "base", "--params", str(params)]) == 2


@pytest.mark.parametrize("overrides, message", [
    ({"categories": {"simple_pyton": 3}}, "unknown BFCL categories"),
    ({"categories": {"simple_python": 0}}, "must be >= 1"),
    ({"categories": {"simple_python": "some"}}, "categories"),
    ({"bfcl_model": "my_model-FC"}, "contain no '_'"),
    ({"bfcl_model": "gpt-4o"}, "must end with '-FC'"),
    ({"surprise": 1}, "surprise"),
    ({"concurrency": 0}, "concurrency"),
])
def test_config_errors(tmp_path: Path, overrides: dict, message: str):
    params = write_params(tmp_path / "params.yaml", evaluate_section(**overrides))
    with pytest.raises(ConfigError, match=message):
        ev_config.load_config(params, "base")


def test_unknown_model_key_and_all_counts(tmp_path: Path):
    params = write_params(tmp_path / "params.yaml", evaluate_section(categories={"live_simple": "all"}))
    config, entry = ev_config.load_config(params, "stage2")
    assert entry.format == "octupus" and config.categories == {"live_simple": "all"}
    assert config.api_model_name == "gpt-4-turbo-2024-04-09"
    with pytest.raises(ConfigError, match="no 'nope'"):
        ev_config.load_config(params, "nope")


def test_server_command_batches_on_transformers_only(tmp_path: Path):
    params = write_params(tmp_path / "params.yaml", evaluate_section())
    config, entry = ev_config.load_config(params, "stage2")
    cmd = ev_server.server_command(entry, config.server, 1234, "m", "k")
    assert cmd[cmd.index("--max-batch") + 1] == "2" and cmd[cmd.index("--default-max-tokens") + 1] == "64"
    vllm = config.server.model_copy(update={"backend": "vllm"})
    assert cmd[cmd.index("--prefix-cache-mb") + 1] == "256"
    vllm_cmd = ev_server.server_command(entry, vllm, 1234, "m", "k")
    assert "--max-batch" not in vllm_cmd and "--prefix-cache-mb" not in vllm_cmd  # vLLM caches prefixes itself
    single = config.server.model_copy(update={"max_batch": 1})
    assert "--max-batch" not in ev_server.server_command(entry, single, 1234, "m", "k")


def test_missing_bfcl_venv_is_a_clear_error(tmp_path: Path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    section = evaluate_section(bfcl_venv=str(tmp_path / "no-venv"), work_dir=str(tmp_path / "work"),
                               metrics_dir=str(tmp_path / "metrics"))
    section["models"]["base"]["path"] = str(model_dir)
    params = write_params(tmp_path / "params.yaml", section)
    assert ev.main(["--model-key", "base", "--params", str(params)]) == 1
    assert not (tmp_path / "metrics").exists()


def test_ctrl_c_exits_130_without_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    section = evaluate_section(metrics_dir=str(tmp_path / "metrics"))
    params = write_params(tmp_path / "params.yaml", section)

    def interrupted(*args: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    assert ev.main(["--model-key", "base", "--params", str(params)]) == 130
    assert not (tmp_path / "metrics").exists()


def test_server_process_group_is_stopped_when_the_run_fails(tmp_path: Path):
    # A stand-in server (stdlib http.server answers /health with 200 for any existing path).
    (tmp_path / "health").write_text("ok")
    port = free_loopback_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    procs = []
    real_popen = subprocess.Popen

    def spy(*args, **kwargs):
        p = real_popen(*args, **kwargs)
        procs.append(p)
        return p

    subprocess.Popen = spy  # type: ignore[misc]
    try:
        with pytest.raises(RuntimeError, match="bfcl blew up"):
            with ev_server.running_server(cmd, port, 30, tmp_path / "server.log") as url:
                assert url == f"http://127.0.0.1:{port}/v1"
                raise RuntimeError("bfcl blew up")
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
    assert procs and procs[0].poll() is not None


def test_sigterm_stops_the_stage_and_its_server(tmp_path: Path):
    # A stand-in server that answers /health, and a "bfcl" that sleeps: terminated mid-run.
    (tmp_path / "health").write_text("ok")
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    section = evaluate_section(bfcl_venv=str(tmp_path / "venv"), work_dir=str(tmp_path / "work"),
                               metrics_dir=str(tmp_path / "metrics"))
    section["models"]["base"]["path"] = str(model_dir)
    params = write_params(tmp_path / "params.yaml", section)
    script = (
        "import sys, subprocess, time\n"
        "from stages import evaluate as ev\n"
        "from stages.evaluation import run\n"
        f"run.server_command = lambda entry, server, port, name, key: [sys.executable, '-m', 'http.server', str(port), "
        f"'--bind', '127.0.0.1', '--directory', {str(tmp_path)!r}]\n"
        "def slow_bfcl(*a, **k):\n"
        "    print('bfcl running', flush=True)\n"
        "    time.sleep(120)\n"
        "run.run_bfcl = slow_bfcl\n"
        f"sys.exit(ev.main(['--model-key', 'base', '--params', {str(params)!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "bfcl running"
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "server stopped" in err
    log_text = (tmp_path / "work" / "base" / "server.log").read_text()
    assert "GET /health" in log_text
    assert not (tmp_path / "metrics").exists()
    port = int(re.search(r"server healthy on port (\d+)", err).group(1))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path):
    cmd = [sys.executable, "-c", "import sys; print('cannot load model xyz'); sys.exit(3)"]
    with pytest.raises(EvalError, match=r"exited with code 3[\s\S]*cannot load model xyz"):
        with ev_server.running_server(cmd, free_loopback_port(), 30, tmp_path / "server.log"):
            pass


# ----------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_stage_runs_real_bfcl_against_the_server_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path):
    venv = REPO / ".venv-bfcl"
    if not (venv / "bin" / "python").is_file():
        pytest.skip(".venv-bfcl is missing: create it with `bash scripts/bfcl_venv.sh`")
    section = evaluate_section(
        categories={"simple_python": 2, "irrelevance": 1},
        bfcl_venv=str(venv), work_dir=str(tmp_path / "work"), metrics_dir=str(tmp_path / "metrics"))
    section["models"]["tiny"] = {"path": str(tiny_model_dir), "format": "octupus"}
    params = write_params(tmp_path / "params.yaml", section)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "--model-key", "tiny", "--params", str(params)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics" / "tiny.json").read_text())
    assert metrics["subset"] is True and metrics["cases"] == 3
    assert {c: m["total"] for c, m in metrics["categories"].items()} == {"simple_python": 2, "irrelevance": 1}
    assert set(metrics["groups"]) == {"non_live", "irrelevance"}
    # Constrained decoding: whatever the random model emitted as calls must be valid.
    assert metrics["validity"]["validity"] in (None, 1.0)
    assert (tmp_path / "metrics" / "tiny_categories.csv").read_text().startswith("category,accuracy")
    # the server is gone
    assert "server stopped" in proc.stderr
    print(f"end-to-end evaluate on 3 cases: {time.monotonic() - start:.1f} s")
    shutil.rmtree(tmp_path / "work", ignore_errors=True)


# ----------------------------------------------------------------------------- bfcl name hook

FAKE_MODEL_CONFIG = '''
from dataclasses import dataclass
from typing import Optional

@dataclass
class ModelConfig:
    model_name: str
    display_name: str
    url: str
    org: str
    license: str
    model_handler: object
    input_price: Optional[float] = None
    output_price: Optional[float] = None
    is_fc_model: bool = True
    underscore_to_dot: bool = False

MODEL_CONFIG_MAPPING = {"gpt-4.1-2025-04-14-FC": ModelConfig("gpt-4.1-2025-04-14", "x", "u", "o", "l", None)}
'''


def test_pth_hook_registers_the_original_model_name_when_bfcl_loads_its_registry(tmp_path: Path):
    # A stand-in bfcl_eval with the same module layout; the hook runs in a fresh interpreter, as
    # from the .pth file that scripts/bfcl_venv.sh installs.
    pkg = tmp_path / "site" / "bfcl_eval"
    for sub in ("", "constants", "model_handler", "model_handler/api_inference"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "constants" / "model_config.py").write_text(FAKE_MODEL_CONFIG)
    (pkg / "constants" / "eval_config.py").write_text(
        "import os\nfrom pathlib import Path\nPROJECT_ROOT = Path(os.environ['BFCL_PROJECT_ROOT'])\n")
    (pkg / "model_handler" / "api_inference" / "openai_response.py").write_text("class OpenAIResponsesHandler: pass\n")
    shutil.copy(REPO / "stages" / "bfcl_runner.py", tmp_path / "site" / "octupus_bfcl_runner.py")
    work = tmp_path / "cwd"
    work.mkdir()
    script = (
        "import os, sys, octupus_bfcl_runner as r\n"
        "r.install_name_hook()\n"
        "assert 'bfcl_eval' not in sys.modules  # nothing imported at start-up\n"
        "from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING as m\n"
        "from bfcl_eval.constants.eval_config import PROJECT_ROOT\n"
        "c = m['gpt-4-turbo-2024-04-09-FC']\n"
        "print(c.model_name, c.model_handler.__name__, c.is_fc_model, c.underscore_to_dot,\n"
        "      'gpt-4.1-2025-04-14-FC' in m, PROJECT_ROOT, os.environ['OPENAI_API_KEY'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("BFCL_PROJECT_ROOT", "OPENAI_API_KEY")}
    env.update(PYTHONPATH=str(tmp_path / "site"), OPENAI_BASE_URL="http://127.0.0.1:8000/v1")
    out = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["gpt-4-turbo-2024-04-09", "OpenAIResponsesHandler", "True", "True", "True",
                                  str(work), "unused"]


def test_calls_returned_cut_are_counted_as_incomplete_not_invalid():
    cases = [{"id": "simple_python_0", "category": "simple_python", "tools": [WEATHER_TOOL]},
             {"id": "simple_python_1", "category": "simple_python", "tools": [WEATHER_TOOL]}]
    results = {"simple_python_0": [{"get_weather": '{"city": "Oslo"}'}, {"get_weather": '{"city": "Li'}],
               "simple_python_1": [{"get_weather": '{"city": "Ro'}]}
    # The server marked one call of case 0 incomplete; case 1's unparseable call was not marked.
    v = ev_results.check_validity(cases, results, cut_calls={"simple_python_0": 1}).as_dict()
    assert (v["incomplete_calls"], v["tool_calls"], v["valid_calls"], v["bad_json"]) == (1, 2, 1, 1)
    assert v["validity"] == pytest.approx(0.5)


def test_the_llamacpp_backend_serves_a_gguf_written_for_the_run_and_removed_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``server.backend: llamacpp``: the model is exported to ``<work_dir>/<key>-gguf/`` with the
    configured type and venv, the server gets ``--gguf`` and the llama.cpp venv's environment, and
    the file is gone once the run ends. The export, the server and bfcl are stand-ins here; the real
    path is exercised by ``make test-llamacpp`` (export_gguf's end-to-end test)."""
    from contextlib import contextmanager

    from stages.evaluation import run as ev_run

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    section = evaluate_section(work_dir=str(tmp_path / "work"))
    section["models"]["stage2"]["path"] = str(model_dir)
    section["server"].update(backend="llamacpp", gguf_type="q8_0", llamacpp_venv="/opt/llama-venv")
    config, entry = ev_config.load_config(write_params(tmp_path / "params.yaml", section), "stage2")
    exported: list[tuple] = []
    served: dict = {}

    def fake_export(model: str, out: Path, gguf_type: str, venv: str, threads: int | None = None) -> None:
        exported.append((model, out, gguf_type, venv))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"GGUF")

    @contextmanager
    def fake_server(cmd, port, timeout_s, log_path, env=None):
        gguf = Path(cmd[cmd.index("--gguf") + 1])
        served.update(cmd=cmd, env=env, existed=gguf.is_file())
        yield "http://127.0.0.1:1/v1"

    monkeypatch.setattr(ev_run, "bfcl_python", lambda config: "python")
    monkeypatch.setattr(ev_run, "export", fake_export)
    monkeypatch.setattr(ev_run, "llamacpp_env", lambda venv: {"PYTHONPATH": venv + "/site"})
    monkeypatch.setattr(ev_run, "running_server", fake_server)
    monkeypatch.setattr(ev_run, "run_bfcl", lambda *args: {})
    monkeypatch.setattr(ev_run, "save_server_metrics", lambda url, path: {"prompt_tokens": 1})
    monkeypatch.setattr(ev_run, "build_metrics", lambda *args: {"overall": 0.0})

    metrics, dev = ev_run.evaluate(config, "stage2", entry)

    gguf = tmp_path / "work" / "stage2-gguf" / "model-q8_0.gguf"
    assert exported == [(str(model_dir), gguf, "q8_0", "/opt/llama-venv")]
    cmd = served["cmd"]
    assert served["existed"] and cmd[cmd.index("--gguf") + 1] == str(gguf)
    assert cmd[cmd.index("--backend") + 1] == "llamacpp" and cmd[cmd.index("--max-batch") + 1] == "2"
    assert served["env"] == {"PYTHONPATH": "/opt/llama-venv/site"}
    assert not gguf.parent.exists() and metrics["server"] == {"prompt_tokens": 1} and dev is None
