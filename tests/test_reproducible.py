"""The deterministic stages write the same bytes for the same params, whatever the thread counts and
the environment: raw, filter, reanswer (from its cache), base_model and edit_tokenizer run twice,
each time as `python -m stages.<name>` in a fresh process and directory, with other thread counts,
hash seed, time zone and Hugging Face offline setting; every file they write must hash the same
(so dvc.lock is stable and a shared DVC cache deduplicates)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from loopback_server import LoopbackServer

from stages import recipe

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("raw", "filter", "reanswer", "base_model", "edit_tokenizer")
OUTPUTS = ("data", "metrics", "models")
ENVIRONMENTS = {
    "one thread, offline": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1",
                            "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                            "PYTHONHASHSEED": "0", "TZ": "UTC"},
    "two threads, online": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "POLARS_MAX_THREADS": "2",
                            "RAYON_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": None,
                            "PYTHONHASHSEED": "12345", "TZ": "Asia/Shanghai"},
}


def params(cache_dir: Path, teacher_url: str) -> dict:
    """The smoke recipe's data and model settings (40 rows a source, a tiny model with SmolLM2's
    tokenizer), and a teacher for the reanswer stage."""
    merged = recipe.apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")),
                                    recipe.load_recipe("smoke", ROOT / "recipes"))
    merged["reanswer"]["cache_dir"] = str(cache_dir)
    merged["reanswer"]["sources"] = ["openhermes", "wildchat"]
    merged["reanswer"]["teacher"] = {
        "model": "teacher", "endpoints": [teacher_url], "api_key_env": None, "temperature": 0.0, "top_p": 1.0,
        "max_tokens": 4, "seed": 0, "extra_body": {}, "concurrency": 4, "timeout_s": 60.0, "max_retries": 1,
        "backoff_s": 0.1, "keep_truncated": True, "max_failed_fraction": 0.0}
    return {section: merged[section] for section in STAGES}


def run_stages(directory: Path, section_params: dict, env_changes: dict[str, str | None]) -> dict[str, str]:
    directory.mkdir(parents=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(section_params, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OCTUPUS_LOG_LEVEL="WARNING")
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    for stage in STAGES:
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=directory, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stderr[-3000:]}"
    hashes = {}
    for top in OUTPUTS:
        for path in sorted((directory / top).rglob("*")):
            if path.is_file():
                hashes[path.relative_to(directory).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.mark.timeout(1200)
def test_same_params_same_bytes_whatever_threads_and_environment(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = LoopbackServer(["--model", str(tiny_model_dir), "--served-model-name", "teacher", "--threads", "1"])
    try:
        section_params = params(tmp_path / "teacher-cache", server.base + "/v1")
        # The first run asks the teacher; the second answers every prompt from the cache.
        runs = [run_stages(tmp_path / f"run{i}", section_params, env) for i, env in enumerate(ENVIRONMENTS.values())]
    finally:
        server.stop()
    first, second = runs
    expected = {"data/raw/toolace.jsonl", "data/filtered/stage2/train.jsonl", "data/reanswered/stage1/train.jsonl",
                "metrics/filter.json", "metrics/reanswer.json", "models/base/model.safetensors",
                "models/edited/model.safetensors", "models/edited/tokenizer_config.json"}
    assert expected <= set(first)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    # The teacher really answered: the re-answered rows are not the filter's.
    assert first["data/reanswered/stage1/train.jsonl"] != first["data/filtered/stage1/train.jsonl"]
