"""Stage ``reanswer`` against the project's own server on loopback (a tiny random model as teacher):
answers replaced, the cache makes a rerun free and a killed run resume, a failing endpoint is
counted and not fatal, failed answers are dropped and counted; ``teacher: null`` copies the rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback_server import LoopbackServer

from serve.process import free_loopback_port
from stages.config import ConfigError, load_section
from stages.reanswer import (
    CACHE_FILE,
    AnswerFailed,
    ReanswerConfig,
    ReanswerError,
    TeacherConfig,
    cache_key,
    reanswer_row,
    run,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "teacher"

pytestmark = pytest.mark.usefixtures("one_thread")


def chat_row(source: str, *turns: str, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return json.dumps({"messages": json.dumps(messages, ensure_ascii=False, separators=(",", ":")), "tools": "[]",
                       "source": source}, ensure_ascii=False)


def write_input(directory: Path, rows: int = 8) -> dict[str, list[str]]:
    """openhermes rows (one and two exchanges) to re-answer, wildchat rows to pass through."""
    directory.mkdir(parents=True, exist_ok=True)
    train = [chat_row("openhermes", f"What is {i} + {i}?", f"{2 * i}.", system="Be brief.") for i in range(rows)]
    train += [chat_row("openhermes", "Name a colour.", "Blue.", "Another one?", "Red.")]
    train += [chat_row("wildchat", f"hello {i}", f"hi {i}") for i in range(3)]
    validation = [chat_row("openhermes", "Say yes.", "Yes."), chat_row("wildchat", "ping", "pong")]
    lines = {"train": train, "validation": validation}
    for split, split_lines in lines.items():
        (directory / f"{split}.jsonl").write_text("\n".join(split_lines) + "\n", encoding="utf-8")
    return lines


def teacher(endpoints: list[str], **overrides: Any) -> dict[str, Any]:
    values = {"model": MODEL, "endpoints": endpoints, "api_key_env": None, "temperature": 0.0, "top_p": 1.0,
              "max_tokens": 6, "seed": 0, "extra_body": {}, "concurrency": 4, "timeout_s": 60.0, "max_retries": 2,
              "backoff_s": 0.05, "keep_truncated": True, "max_failed_fraction": 0.0}
    values.update(overrides)
    return values


def make_config(tmp: Path, teacher_section: dict[str, Any] | None, cache: str = "cache", out: str = "out") -> ReanswerConfig:
    return ReanswerConfig.model_validate({
        "input_dir": str(tmp / "in"), "output_dir": str(tmp / out), "metrics_file": str(tmp / f"{out}.metrics.json"),
        "cache_dir": str(tmp / cache), "sources": ["openhermes"], "teacher": teacher_section})


def outputs(tmp: Path, out: str = "out") -> dict[str, bytes]:
    return {split: (tmp / out / f"{split}.jsonl").read_bytes() for split in ("train", "validation")}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    srv = LoopbackServer(["--model", str(tiny_model_dir), "--served-model-name", MODEL, "--threads", "1"])
    yield srv
    srv.stop()


def chat_requests(server: LoopbackServer) -> int:
    """Chat completions the server has answered (its own /metrics)."""
    with urllib.request.urlopen(server.base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("octupus_requests_total{") and 'endpoint="chat_completions"' in line))


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_loopback_port()}/v1"  # nothing listens there


def test_null_teacher_passes_rows_through_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_input(tmp_path / "in")
    with caplog.at_level("INFO"):
        result = run(make_config(tmp_path, None))
    assert outputs(tmp_path) == {s: (tmp_path / "in" / f"{s}.jsonl").read_bytes() for s in ("train", "validation")}
    assert "teacher is null: the rows pass through unchanged" in caplog.text
    metrics = json.loads((tmp_path / "out.metrics.json").read_text())
    assert metrics == result["metrics"]
    assert metrics["teacher"] is None and metrics["passed_through_unchanged"] is True
    assert metrics["total"]["passed_through"] == metrics["total"]["rows_out"] == 14
    assert not (tmp_path / "cache" / CACHE_FILE).exists()  # nothing heavy, no teacher state


def test_answers_replaced_by_the_teacher_and_a_rerun_costs_nothing(tmp_path: Path, server: LoopbackServer) -> None:
    lines = write_input(tmp_path / "in")
    config = make_config(tmp_path, teacher([server.base + "/v1"]))
    before = chat_requests(server)
    first = run(config)
    sent = chat_requests(server) - before
    assert sent == first["run"]["requests"] == 11  # 8 rows of one exchange, one of two, one in validation
    train = [json.loads(line) for line in outputs(tmp_path)["train"].decode().splitlines()]
    original = [json.loads(line) for line in lines["train"]]
    assert [r["source"] for r in train] == [r["source"] for r in original]  # order kept
    db = sqlite3.connect(tmp_path / "cache" / CACHE_FILE)
    sampling = TeacherConfig.model_validate(teacher([server.base + "/v1"])).sampling()
    for new, old in zip(train, original, strict=True):
        new_messages, old_messages = json.loads(new["messages"]), json.loads(old["messages"])
        assert [m["role"] for m in new_messages] == [m["role"] for m in old_messages]
        if new["source"] == "wildchat":
            assert new == old  # passed through
            continue
        for i, (m, o) in enumerate(zip(new_messages, old_messages, strict=True)):
            if m["role"] != "assistant":
                assert m == o
                continue
            # The teacher's answer to the conversation so far, its own earlier answers included.
            stored = db.execute("SELECT content FROM answers WHERE key = ?",
                                (cache_key(sampling, new_messages[:i]),)).fetchone()
            assert stored == (m["content"],) and m["content"] != o["content"]
    db.close()
    metrics = first["metrics"]["total"]
    assert metrics == {"rows_in": 14, "rows_out": 14, "reanswered": 10, "passed_through": 4,
                       "dropped": {"refused": 0, "failed": 0, "truncated": 0, "empty": 0, "reserved_marker": 0}}

    kept = outputs(tmp_path)
    before = chat_requests(server)
    second = run(config)
    assert chat_requests(server) == before and second["run"]["requests"] == 0 and second["run"]["cache_hits"] == 11
    assert outputs(tmp_path) == kept
    assert second["metrics"] == first["metrics"]


def test_a_killed_run_resumes_from_the_cache(tmp_path: Path, server: LoopbackServer) -> None:
    write_input(tmp_path / "in", rows=24)
    # A reference run with its own cache, then a run killed midway and resumed with another.
    run(make_config(tmp_path, teacher([server.base + "/v1"], max_tokens=24), cache="ref_cache", out="ref"))
    slow = teacher([server.base + "/v1"], max_tokens=24, concurrency=1)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"reanswer": make_config(tmp_path, slow).model_dump(mode="json")}))
    proc = subprocess.Popen([sys.executable, "-m", "stages.reanswer", "--params", str(params)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cache = tmp_path / "cache" / CACHE_FILE
    deadline = time.monotonic() + 120
    answered = 0
    try:
        while answered < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            if cache.exists():
                try:
                    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as db:
                        answered = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
                except sqlite3.OperationalError:
                    pass  # the table is being created
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "out").exists()  # outputs appear only when a run completes
    with sqlite3.connect(cache) as db:
        kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert 4 <= kept < 27  # 24 + 2 + 1 prompts
    before = chat_requests(server)
    while True:  # the request the killed run had in flight may still finish on the server
        time.sleep(0.5)
        if chat_requests(server) == before:
            break
        before = chat_requests(server)
    resumed = run(make_config(tmp_path, slow))
    assert resumed["run"]["cache_hits"] == kept and resumed["run"]["requests"] == 27 - kept
    assert chat_requests(server) - before == 27 - kept
    assert outputs(tmp_path) == outputs(tmp_path, "ref")  # greedy: the same answers as an uninterrupted run


def test_a_failing_endpoint_is_counted_not_fatal(tmp_path: Path, server: LoopbackServer) -> None:
    write_input(tmp_path / "in")
    run(make_config(tmp_path, teacher([server.base + "/v1"]), cache="ref_cache", out="ref"))
    dead = dead_endpoint()
    result = run(make_config(tmp_path, teacher([dead, server.base + "/v1"], concurrency=2)))
    assert result["run"]["endpoint_errors"][dead] > 0
    assert result["metrics"]["total"]["rows_out"] == 14 and not any(result["metrics"]["total"]["dropped"].values())
    assert outputs(tmp_path) == outputs(tmp_path, "ref")


def test_rows_whose_answer_fails_are_dropped_and_counted(tmp_path: Path) -> None:
    write_input(tmp_path / "in")
    only_dead = teacher([dead_endpoint()], max_retries=1, max_failed_fraction=1.0)
    result = run(make_config(tmp_path, only_dead))
    total = result["metrics"]["total"]
    assert total["dropped"]["failed"] == 10 and total["reanswered"] == 0
    assert total["rows_out"] == total["passed_through"] == 4  # the other sources' rows are still written
    # Past max_failed_fraction the stage fails, after saying what failed; no output is left behind.
    with pytest.raises(ReanswerError, match="10 of 10 rows"):
        run(make_config(tmp_path, dict(only_dead, max_failed_fraction=0.5), out="out2"))
    assert not (tmp_path / "out2").exists()


class ScriptedTeacher:
    """Answers in order from a script; records the prompts."""

    def __init__(self, answers: list[tuple[str, str | None]]) -> None:
        self.answers = list(answers)
        self.prompts: list[list[dict[str, Any]]] = []

    async def answer(self, prompt: list[dict[str, Any]]) -> tuple[str, str | None]:
        self.prompts.append([dict(m) for m in prompt])
        return self.answers.pop(0)


@pytest.mark.parametrize(("answer", "keep_truncated", "reason"), [
    (("cut", "length"), False, "truncated"), (("  ", "stop"), False, "empty"),
    (("a <|FUNCTION_CALL|> b", "stop"), False, "reserved_marker"), (("ends<|im_end|>", "stop"), False, "reserved_marker"),
    (("cut", "length"), True, None),
])
def test_answer_checks(answer: tuple[str, str | None], keep_truncated: bool, reason: str | None) -> None:
    import asyncio

    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    scripted = ScriptedTeacher([("first", "stop"), answer])
    if reason is None:
        out = asyncio.run(reanswer_row(scripted, messages, keep_truncated))  # type: ignore[arg-type]
        assert [m["content"] for m in out] == ["q1", "first", "q2", "cut"]
        assert scripted.prompts[1] == [messages[0], {"role": "assistant", "content": "first"}, messages[2]]
        return
    with pytest.raises(AnswerFailed) as failed:
        asyncio.run(reanswer_row(scripted, messages, keep_truncated))  # type: ignore[arg-type]
    assert failed.value.reason == reason


def test_config_is_strict(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    good = make_config(tmp_path, teacher(["http://127.0.0.1:1/v1"])).model_dump(mode="json")
    for bad, match in ((dict(good, extra=1), "extra"),
                       (dict(good, teacher=dict(good["teacher"], endpoints=["localhost:8000"])), "http"),
                       (dict(good, teacher=dict(good["teacher"], endpoints=[])), "endpoints"),
                       (dict(good, teacher=dict(good["teacher"], concurrency=0)), "concurrency")):
        params.write_text(yaml.safe_dump({"reanswer": bad}))
        with pytest.raises(ConfigError, match=match):
            load_section("reanswer", ReanswerConfig, params)
    # The cache key is the prompt and what shapes the answer, not where or how fast it is asked.
    a = TeacherConfig.model_validate(good["teacher"])
    b = TeacherConfig.model_validate(dict(good["teacher"], endpoints=["http://other:1/v1"], concurrency=9, timeout_s=1))
    c = TeacherConfig.model_validate(dict(good["teacher"], temperature=0.7))
    prompt = [{"role": "user", "content": "hi"}]
    assert cache_key(a.sampling(), prompt) == cache_key(b.sampling(), prompt) != cache_key(c.sampling(), prompt)


def test_default_params_section_is_the_pass_through() -> None:
    config = load_section("reanswer", ReanswerConfig, ROOT / "params.yaml")
    assert config.teacher is None and config.input_dir == "data/filtered/stage1"
    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train_stage1"]
    assert train["data_dir"] == config.output_dir  # train_stage1 reads what this stage writes
