"""Stage ``reanswer``: the chat rows' assistant turns written again by a teacher model.

    python -m stages.reanswer [--params params.yaml]

Reads ``<input_dir>/{train,validation}.jsonl`` (the filter's stage-1 set) and writes the same
files to ``<output_dir>``, which ``train_stage1`` reads. In rows whose ``source`` is one of
``sources`` every assistant turn is replaced, in order, by the teacher's answer to the
conversation so far (its own earlier answers included), as the original project re-answered
OpenHermes-2.5 with Qwen2.5-72B-Instruct; other rows pass through unchanged.

The teacher is any OpenAI-compatible chat-completions endpoint (vLLM on GPU machines, several of
them to spread a million prompts, or this project's own ``python -m serve``): requests run
``concurrency`` at a time, each on the least busy endpoint, and are retried with exponential
backoff on connection errors, timeouts, 408/429 and 5xx answers (another endpoint first). Every
answer is stored in a persistent cache (``cache_dir/answers.sqlite``) keyed by the prompt and the
teacher settings that shape the answer (model, sampling, ``extra_body``; not the endpoints or the
concurrency), so a killed run resumes where it stopped and a rerun sends no request. A row whose
answer fails (refused, failed after the retries, cut at ``max_tokens``, empty, or holding a
format marker) is dropped and counted in ``metrics_file``. Row order is kept, so a run from the
cache writes the same bytes.

``teacher: null`` (the CPU default) skips all of it: the files are copied unchanged, and the log
and the metrics say so. This module never imports torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from tqdm import tqdm

from stages.config import StrictModel, load_section, log_config, setup_logging, stage_argparser
from toolcall.tokens import reserved_marker_in

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
CACHE_FILE = "answers.sqlite"
# Why a row was dropped: every key is always present in the metrics.
DROP_REASONS = (
    "refused",          # the endpoint answered 4xx (other than 408/429): e.g. the prompt is too long
    "failed",           # no answer after every retry (connection errors, timeouts, 429, 5xx)
    "truncated",        # the answer was cut at max_tokens (finish_reason "length"), unless keep_truncated
    "empty",            # the answer has no text
    "reserved_marker",  # the answer holds a format marker or an eos string (it would split the turn)
)
# Part of the cache key: a change in how prompts are built must not reuse older answers.
PROMPT_VERSION = 1
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0


class TeacherConfig(StrictModel):
    model: str = Field(min_length=1, description="model name the endpoints serve")
    endpoints: list[str] = Field(min_length=1, description="OpenAI-compatible base URLs, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(description="environment variable holding the API key; null: send none")
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    max_tokens: int = Field(gt=0, description="longest answer, in tokens")
    seed: int | None = Field(description="per-request sampling seed (vLLM honours it); null: none sent")
    extra_body: dict[str, Any] = Field(description="more request fields (e.g. vLLM's top_k, repetition_penalty)")
    concurrency: int = Field(gt=0, description="requests in flight, over all endpoints")
    timeout_s: float = Field(gt=0.0, description="one request, connect to last byte")
    max_retries: int = Field(ge=0, description="retries of a request after its first attempt")
    backoff_s: float = Field(ge=0.0, description="wait before the first retry; doubles each retry (at most 60 s)")
    keep_truncated: bool = Field(description="keep an answer cut at max_tokens (false: drop the row)")
    max_failed_fraction: float = Field(ge=0.0, le=1.0, description="fail the stage when more of the re-answered "
                                       "rows than this are dropped (a dead teacher must not pass silently)")

    @field_validator("endpoints")
    @classmethod
    def _http_urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must be an http(s) URL (e.g. http://host:8000/v1)")
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("endpoints are listed twice")
        return endpoints

    def sampling(self) -> dict[str, Any]:
        """The request fields that shape an answer (they key the cache, with the prompt)."""
        fields = {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                  "max_tokens": self.max_tokens, **({"seed": self.seed} if self.seed is not None else {})}
        return {**self.extra_body, **fields}


class ReanswerConfig(StrictModel):
    input_dir: str = Field(description="the filter's chat set: train.jsonl and validation.jsonl")
    output_dir: str = Field(description="the same files with teacher answers (train_stage1 reads them)")
    metrics_file: str
    cache_dir: str = Field(description="persistent answer cache (a killed run resumes from it)")
    sources: list[str] = Field(description="rows whose `source` is one of these are re-answered")
    teacher: TeacherConfig | None = Field(description="null: copy the rows unchanged")


class ReanswerError(RuntimeError):
    """The teacher cannot be used as configured, or too many answers failed."""


# ----------------------------------------------------------------------------------------------
# The cache


def cache_key(sampling: dict[str, Any], prompt: list[dict[str, Any]]) -> str:
    text = json.dumps({"v": PROMPT_VERSION, "request": sampling, "messages": prompt}, ensure_ascii=False,
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
    """Answers by cache key in SQLite; each answer is committed as it arrives, so a killed run
    loses at most the requests in flight. The first answer stored for a key is kept."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, content TEXT NOT NULL, "
                        "finish_reason TEXT)")
        self.db.commit()

    def get(self, key: str) -> tuple[str, str | None] | None:
        row = self.db.execute("SELECT content, finish_reason FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put(self, key: str, content: str, finish_reason: str | None) -> None:
        self.db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?)", (key, content, finish_reason))
        self.db.commit()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self.db.close()


# ----------------------------------------------------------------------------------------------
# The teacher's endpoints


@dataclass
class RunStats:
    """What this run cost (logged and returned; never part of the outputs)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    endpoint_errors: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "cache_hits": self.cache_hits, "retries": self.retries,
                "endpoint_errors": dict(sorted(self.endpoint_errors.items()))}


class AnswerFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Teacher:
    """Chat-completion requests over several endpoints: concurrency, retries with backoff, cache."""

    def __init__(self, config: TeacherConfig, cache: AnswerCache, stats: RunStats) -> None:
        import httpx  # only a run with a teacher needs it

        self.config = config
        self.cache = cache
        self.stats = stats
        self.sampling = config.sampling()
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.api_key_env and not key:
            raise ReanswerError(f"reanswer.teacher.api_key_env: ${config.api_key_env} is not set")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=config.timeout_s,
                                        limits=httpx.Limits(max_connections=config.concurrency))
        self.urls = [url.rstrip("/") + "/chat/completions" for url in config.endpoints]
        self.busy = [0] * len(self.urls)
        self.turn = 0
        self.slots = asyncio.Semaphore(config.concurrency)
        self.pending: dict[str, asyncio.Future[tuple[str, str | None]]] = {}
        self._transport_errors = (httpx.TransportError, httpx.HTTPStatusError)

    def _pick(self, avoid: int | None) -> int:
        """The least busy endpoint (round robin among equals), another than ``avoid`` if there is one."""
        order = [(self.turn + i) % len(self.urls) for i in range(len(self.urls))]
        self.turn = (self.turn + 1) % len(self.urls)
        candidates = [i for i in order if i != avoid] or order
        return min(candidates, key=lambda i: self.busy[i])

    async def answer(self, prompt: list[dict[str, Any]]) -> tuple[str, str | None]:
        """(content, finish_reason) for the prompt, from the cache or the endpoints. Raises
        :class:`AnswerFailed`. Concurrent requests for the same prompt share one request."""
        key = cache_key(self.sampling, prompt)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        if key in self.pending:
            return await asyncio.shield(self.pending[key])
        future: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            result = await self._request(prompt)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved: the sharers waiting on it get it
            raise
        finally:
            del self.pending[key]
        self.cache.put(key, *result)
        future.set_result(result)
        return result

    async def _request(self, prompt: list[dict[str, Any]]) -> tuple[str, str | None]:
        body = {**self.sampling, "messages": prompt, "stream": False}
        last_error = ""
        avoid: int | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(min(self.config.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            async with self.slots:
                at = self._pick(avoid)
                self.busy[at] += 1
                self.stats.requests += 1
                try:
                    response = await self.client.post(self.urls[at], json=body)
                except self._transport_errors as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                    self.stats.endpoint_errors[self.config.endpoints[at]] += 1
                    avoid = at
                    continue
                finally:
                    self.busy[at] -= 1
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                self.stats.endpoint_errors[self.config.endpoints[at]] += 1
                avoid = at
                continue
            if response.status_code != 200:
                raise AnswerFailed("refused", f"HTTP {response.status_code}: {response.text[:200]}")
            try:
                choice = response.json()["choices"][0]
                content = choice["message"]["content"]
                finish = choice.get("finish_reason")
            except (ValueError, KeyError, IndexError, TypeError):
                last_error = f"not a chat completion: {response.text[:200]}"
                self.stats.endpoint_errors[self.config.endpoints[at]] += 1
                avoid = at
                continue
            return (content if isinstance(content, str) else ""), finish
        raise AnswerFailed("failed", f"{self.config.max_retries + 1} attempts, last: {last_error}")

    async def close(self) -> None:
        await self.client.aclose()


# ----------------------------------------------------------------------------------------------
# Rows


def _dumps_compact(value: Any) -> str:
    # The filter's byte form of messages (stages/parsing/json_codec.py).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _line(messages: str, tools: str, source: str) -> str:
    return json.dumps({"messages": messages, "tools": tools, "source": source}, ensure_ascii=False) + "\n"


def is_chat(row: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    """No tools offered, no calls, no tool results: only text turns."""
    return row.get("tools") == "[]" and all(
        m.get("role") in ("system", "user", "assistant") and not m.get("tool_calls") for m in messages)


async def reanswer_row(teacher: Teacher, messages: list[dict[str, Any]], keep_truncated: bool) -> list[dict[str, Any]]:
    """The conversation with every assistant turn replaced by the teacher's answer to what comes
    before it (its own earlier answers included). Raises :class:`AnswerFailed`."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] != "assistant":
            out.append(message)
            continue
        content, finish = await teacher.answer(out)
        if finish == "length" and not keep_truncated:
            raise AnswerFailed("truncated", "cut at max_tokens")
        if not content.strip():
            raise AnswerFailed("empty", "no text")
        marker = reserved_marker_in(content)
        if marker is not None:
            raise AnswerFailed("reserved_marker", marker)
        out.append({"role": "assistant", "content": content})
    return out


@dataclass
class SplitCounts:
    rows_in: int = 0
    rows_out: int = 0
    reanswered: int = 0
    passed_through: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "reanswered": self.reanswered,
                "passed_through": self.passed_through,
                "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS}}


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line


async def _reanswer_file(teacher: Teacher, config: ReanswerConfig, src: Path, dst: Path, counts: SplitCounts,
                         bar: tqdm) -> None:
    """Rows of ``src`` in order to ``dst``; at most a window of rows is held while answers arrive."""
    assert config.teacher is not None
    wanted = set(config.sources)
    window = 4 * config.teacher.concurrency
    pending: deque[tuple[str, dict[str, Any], asyncio.Task[list[dict[str, Any]]] | None]] = deque()

    async def write_next(out: Any) -> None:
        line, row, task = pending.popleft()
        if task is None:
            counts.passed_through += 1
            counts.rows_out += 1
            out.write(line if line.endswith("\n") else line + "\n")
        else:
            try:
                messages = await task
            except AnswerFailed as failed:
                counts.dropped[failed.reason] += 1
                log.debug("row dropped: %s", failed)
            else:
                counts.reanswered += 1
                counts.rows_out += 1
                out.write(_line(_dumps_compact(messages), row["tools"], row["source"]))
        bar.update(1)

    with dst.open("w", encoding="utf-8", newline="\n") as out:
        for line in _lines(src):
            counts.rows_in += 1
            row = json.loads(line)
            messages = json.loads(row["messages"])
            task = None
            if row.get("source") in wanted and is_chat(row, messages):
                task = asyncio.ensure_future(reanswer_row(teacher, messages, config.teacher.keep_truncated))
            pending.append((line, row, task))
            if len(pending) >= window:
                await write_next(out)
        while pending:
            await write_next(out)


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


async def _run_teacher(config: ReanswerConfig, inputs: dict[str, Path], staging: Path,
                       counts: dict[str, SplitCounts], stats: RunStats) -> None:
    assert config.teacher is not None
    cache = AnswerCache(Path(config.cache_dir) / CACHE_FILE)
    teacher = Teacher(config.teacher, cache, stats)
    total = sum(_count_lines(p) for p in inputs.values())
    try:
        with tqdm(total=total, desc="reanswer", unit="row", mininterval=2.0) as bar:
            for split, src in inputs.items():
                await _reanswer_file(teacher, config, src, staging / f"{split}.jsonl", counts[split], bar)
    finally:
        await teacher.close()
        cache.close()


def run(config: ReanswerConfig) -> dict[str, Any]:
    in_dir, out_dir = Path(config.input_dir), Path(config.output_dir)
    inputs = {split: in_dir / f"{split}.jsonl" for split in SPLITS}
    missing = [str(p) for p in inputs.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"reanswer: {missing} not found (run the filter stage)")
    cache_dir = Path(config.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    counts = {split: SplitCounts() for split in SPLITS}
    stats = RunStats()
    start = time.perf_counter()
    try:
        if config.teacher is None:
            log.info("reanswer: teacher is null: the rows pass through unchanged (%s -> %s)", in_dir, out_dir)
            for split, src in inputs.items():
                shutil.copyfile(src, staging / f"{split}.jsonl")
                n = _count_lines(src)
                counts[split] = SplitCounts(rows_in=n, rows_out=n, passed_through=n)
        else:
            log.info("reanswer: teacher %s on %d endpoint(s), rows of %s", config.teacher.model,
                     len(config.teacher.endpoints), ", ".join(config.sources))
            asyncio.run(_run_teacher(config, inputs, staging, counts, stats))
        metrics = _metrics(config, counts)
        # What this run cost depends on the cache and the endpoints' health, not on the params: it
        # is logged and returned, never written where DVC hashes it.
        report = {**stats.as_dict(), "seconds": round(time.perf_counter() - start, 1)}
        log.info("reanswer: %s; this run: %s", json.dumps(metrics["total"]), json.dumps(report))
        attempted = metrics["total"]["reanswered"] + sum(metrics["total"]["dropped"].values())
        failed = sum(metrics["total"]["dropped"].values())
        if config.teacher is not None and attempted and failed / attempted > config.teacher.max_failed_fraction:
            raise ReanswerError(
                f"{failed} of {attempted} rows to re-answer failed ({json.dumps(metrics['total']['dropped'])}), more "
                f"than max_failed_fraction {config.teacher.max_failed_fraction}; answers so far are cached, a rerun "
                f"resumes (endpoint errors this run: {json.dumps(report['endpoint_errors'])})")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metrics_path = Path(config.metrics_file)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"metrics": metrics, "run": report}


def _metrics(config: ReanswerConfig, counts: dict[str, SplitCounts]) -> dict[str, Any]:
    total = SplitCounts()
    for c in counts.values():
        total.rows_in += c.rows_in
        total.rows_out += c.rows_out
        total.reanswered += c.reanswered
        total.passed_through += c.passed_through
        total.dropped.update(c.dropped)
    teacher = config.teacher
    return {
        "teacher": None if teacher is None else {"model": teacher.model, "sampling": teacher.sampling(),
                                                 "sources": sorted(config.sources)},
        "passed_through_unchanged": teacher is None,
        "splits": {split: c.as_dict() for split, c in counts.items()},
        "total": total.as_dict(),
    }


def main(argv: list[str] | None = None) -> None:
    args = stage_argparser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    config = load_section("reanswer", ReanswerConfig, args.params)
    log_config("reanswer", config)
    run(config)


if __name__ == "__main__":
    main()
