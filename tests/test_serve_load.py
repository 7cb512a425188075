"""Load: many concurrent clients against `python -m serve` in its own process, on loopback.

One run mixes non-streaming and streaming chat completions with and without tools (tool_choice
auto / required / named), the Responses endpoint (plain and streamed), and streaming clients of
both endpoints that go away mid-stream.
It checks what an operator relies on under load:

- no request fails: every client that stays gets a 200 and a well-formed body, and every tool
  call it receives parses and validates against the schema it offered;
- every generation whose client left is cancelled, counted exactly once in ``/metrics``;
- the server still answers afterwards, and its resident memory returns to the level it had after
  a warm-up run of the same mix (a leak of per-request state would show as growth).

The server runs as a subprocess so that its RSS is its own, not pytest's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from loopback_server import is_cut

from serve.process import ServerProcess, free_loopback_port, running_server, serve_command

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
FLAGS = {"type": "object", "properties": {"on": {"type": "boolean"},
                                          "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                                                   "maxItems": 2}},
         "required": ["on"]}
# The grammar forbids ending a call to `fill` before 600 digits: at least ~1,200 tokens (~10 s here),
# far more than a disconnecting client ever lets run. Its generation is therefore always still
# running (or still queued) when the client goes away, which makes the number of cancellations exact.
LONG = {"type": "object", "properties": {"values": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                              "maximum": 9},
                                                    "minItems": 600, "maxItems": 600}},
        "required": ["values"]}
SCHEMAS = {"get_weather": WEATHER, "set_flags": FLAGS, "fill": LONG}
TOOLS = [{"type": "function", "function": {"name": n, "description": f"{n} tool", "parameters": s}}
         for n, s in SCHEMAS.items() if n != "fill"]
FILL_TOOL = [{"type": "function", "function": {"name": "fill", "description": "fill", "parameters": LONG}}]
RESPONSES_TOOLS = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]}
                   for t in TOOLS]

# Small outputs keep the whole run within seconds on a tiny model; the string and digit caps let
# calls complete inside them.
SERVER_FLAGS = ["--max-string-length", "8", "--max-integer-digits", "3", "--default-max-tokens", "32",
                "--threads", "1", "--log-level", "WARNING"]
TEXT_TOKENS = 12
CALL_TOKENS = 32
DISCONNECT_MAX_TOKENS = 4000
FINISH_REASONS = {"stop", "length", "tool_calls"}

# RSS may grow by at most this much from the end of the warm-up run to the end of two more runs of
# the same mix (100 requests). Why 16 MiB: after warm-up, the allocator arenas, torch's CPU caches,
# the tokenizer and the grammar caches have their steady size, and what is left is allocator noise
# (measured here: +0.2 MiB). Leaking per-request state crosses the bound from ~160 KiB a request:
# the KV cache of one ~130-token request of this model alone is 2 layers x 2 x 64 x 130 x 4 bytes
# = 133 KiB, plus its prompt, matcher, event lists and SSE chunks. Smaller leaks go unseen here.
RSS_BOUND_BYTES = 16 * 1024 * 1024


# ----------------------------------------------------------------------------- the server process


def rss_bytes(pid: int) -> int:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc: cannot measure the server's memory")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_loopback_port()
    log_path = tmp_path_factory.mktemp("load") / "server.log"
    # One torch thread: a tiny model gains nothing from more, and the suite may share the cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = serve_command(port, ["--model", str(tiny_model_dir), "--served-model-name", MODEL, *SERVER_FLAGS])
    with running_server(cmd, port, log_path, timeout_s=120, env=env, cwd=REPO) as srv:
        yield srv


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def metric_sum(text: str, name: str, keep: Any = lambda labels: True) -> float:
    """The sum of every labelled sample of ``name`` whose label text passes ``keep``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            total += float(value) if keep(labels) else 0.0
    return total


def metrics_text(base: str) -> str:
    return httpx.get(base + "/metrics", timeout=30).text


# ----------------------------------------------------------------------------- the clients


@dataclass
class Outcome:
    kind: str
    ok: bool = False
    problem: str = ""
    calls: int = 0
    disconnected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def check_call(name: str, arguments: str, offered: set[str]) -> None:
    assert name in offered, f"call to {name!r}, which was not offered ({sorted(offered)})"
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def check_chat_body(body: dict[str, Any], offered: set[str]) -> int:
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    (choice,) = body["choices"]
    assert choice["finish_reason"] in FINISH_REASONS, choice
    message = choice["message"]
    assert message["role"] == "assistant"
    calls = message.get("tool_calls") or []
    if choice["finish_reason"] == "tool_calls":
        assert calls and message["content"] is None
    for i, call in enumerate(calls):
        assert call["id"].startswith("call_") and call["type"] == "function"
        if choice["finish_reason"] == "length" and i == len(calls) - 1 and is_cut(call["function"]["arguments"]):
            break  # cut by max_tokens inside its arguments
        check_call(call["function"]["name"], call["function"]["arguments"], offered)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return len(calls)


async def chat(client: httpx.AsyncClient, kind: str, seed: int, tools: list[dict[str, Any]] | None,
               tool_choice: Any, max_tokens: int) -> Outcome:
    out = Outcome(kind)
    body: dict[str, Any] = {"model": MODEL, "messages": USER, "seed": seed, "max_tokens": max_tokens,
                            "temperature": 1.0}
    if tools:
        body.update(tools=tools, tool_choice=tool_choice)
    try:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
        offered = {t["function"]["name"] for t in tools or []}
        out.calls = check_chat_body(r.json(), offered)
        if tool_choice in ("required", "named") or isinstance(tool_choice, dict):
            # No text is allowed: content is null, or empty when max_tokens cut the call off.
            assert not r.json()["choices"][0]["message"]["content"]
        out.ok = True
    except Exception as exc:  # collected and reported together below
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


async def chat_stream(client: httpx.AsyncClient, kind: str, seed: int, tools: list[dict[str, Any]] | None,
                      tool_choice: Any, max_tokens: int) -> Outcome:
    out = Outcome(kind)
    body: dict[str, Any] = {"model": MODEL, "messages": USER, "seed": seed, "max_tokens": max_tokens,
                            "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    if tools:
        body.update(tools=tools, tool_choice=tool_choice)
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, f"{r.status_code}: {(await r.aread())[:300]!r}"
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [ln async for ln in r.aiter_lines() if ln]
        assert lines and lines[-1] == "data: [DONE]", lines[-3:]
        chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
        assert all("error" not in c for c in chunks), chunks[-1]
        calls: dict[int, list[str]] = {}
        finish = None
        for c in chunks[:-1]:
            assert c["object"] == "chat.completion.chunk"
            (ch,) = c["choices"]
            for tc in ch["delta"].get("tool_calls") or []:
                if "id" in tc:
                    calls[tc["index"]] = [tc["function"]["name"], ""]
                calls[tc["index"]][1] += tc["function"]["arguments"]
            finish = ch["finish_reason"] or finish
        assert finish in FINISH_REASONS, finish
        usage = chunks[-1]["usage"]
        assert chunks[-1]["choices"] == [] and usage["completion_tokens"] <= max_tokens + 1
        offered = {t["function"]["name"] for t in tools or []}
        # Every call is complete and valid, except a last one cut by max_tokens inside its arguments.
        for i, (name, arguments) in sorted(calls.items()):
            if not (finish == "length" and i == len(calls) - 1 and is_cut(arguments)):
                check_call(name, arguments, offered)
        if finish == "tool_calls":
            assert calls
        out.calls = len(calls)
        out.ok = True
    except Exception as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


async def responses(client: httpx.AsyncClient, seed: int, with_tools: bool) -> Outcome:
    out = Outcome("responses" + ("+tools" if with_tools else ""))
    body: dict[str, Any] = {"model": MODEL, "input": [{"role": "user", "content": "weather in Oslo?"}],
                            "store": False, "temperature": 1.0, "seed": seed,
                            "max_output_tokens": CALL_TOKENS if with_tools else TEXT_TOKENS}
    if with_tools:
        body["tools"] = RESPONSES_TOOLS
    try:
        r = await client.post("/v1/responses", json=body)
        assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
        resp = r.json()
        assert resp["object"] == "response" and resp["status"] in ("completed", "incomplete")
        assert resp["usage"]["input_tokens"] > 0
        check_response(resp, with_tools)
        out.calls = sum(item["type"] == "function_call" for item in resp["output"])
        out.ok = True
    except Exception as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


def check_response(resp: dict[str, Any], with_tools: bool) -> None:
    assert resp["object"] == "response" and resp["status"] in ("completed", "incomplete")
    assert resp["usage"]["input_tokens"] > 0
    for item in resp["output"]:
        assert item["type"] in ("message", "function_call")
        if item["type"] == "function_call":
            if item["status"] == "incomplete":  # cut by the output cap inside its arguments
                assert resp["status"] == "incomplete" and item is resp["output"][-1]
                continue
            assert item["status"] == "completed"
            check_call(item["name"], item["arguments"], {t["name"] for t in RESPONSES_TOOLS} if with_tools else set())


async def responses_stream(client: httpx.AsyncClient, seed: int) -> Outcome:
    """A streamed Responses call with tools; its terminal event carries the whole response."""
    out = Outcome("responses+stream")
    body = {"model": MODEL, "input": "weather in Oslo?", "temperature": 1.0, "seed": seed, "stream": True,
            "max_output_tokens": CALL_TOKENS, "tools": RESPONSES_TOOLS, "tool_choice": "required"}
    try:
        async with client.stream("POST", "/v1/responses", json=body) as r:
            assert r.status_code == 200, f"{r.status_code}: {(await r.aread())[:300]!r}"
            events = [json.loads(ln[6:]) async for ln in r.aiter_lines() if ln.startswith("data: ")]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[-1]["type"] in ("response.completed", "response.incomplete"), events[-1]["type"]
        check_response(events[-1]["response"], True)
        out.calls = sum(item["type"] == "function_call" for item in events[-1]["response"]["output"])
        out.ok = True
    except Exception as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


async def disconnecting(client: httpx.AsyncClient, seed: int) -> Outcome:
    """Stream a call to `fill` and leave after its first generated event."""
    out = Outcome("disconnect", disconnected=True)
    body = {"model": MODEL, "messages": USER, "seed": seed, "stream": True, "max_tokens": DISCONNECT_MAX_TOKENS,
            "tools": FILL_TOOL, "tool_choice": {"type": "function", "function": {"name": "fill"}}}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, r.status_code
            events = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events += 1
                    # The first event (the role) is sent before generation starts; the second comes
                    # from the generation, so it is surely running when the connection closes.
                    if events == 2:
                        break
            assert events == 2, f"stream ended after {events} events"
        out.ok = True
    except Exception as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


async def disconnecting_responses(client: httpx.AsyncClient, seed: int) -> Outcome:
    """Stream a Responses call to `fill` and leave after its first generated event."""
    out = Outcome("disconnect+responses", disconnected=True)
    body = {"model": MODEL, "input": "fill", "seed": seed, "stream": True, "max_output_tokens": DISCONNECT_MAX_TOKENS,
            "tools": [{"type": "function", "name": "fill", "parameters": LONG}],
            "tool_choice": {"type": "function", "name": "fill"}}
    try:
        async with client.stream("POST", "/v1/responses", json=body) as r:
            assert r.status_code == 200, r.status_code
            async for line in r.aiter_lines():
                # created and in_progress come before generation; an output item comes from it.
                if line.startswith("data: ") and "response.output_item.added" in line:
                    break
            else:
                raise AssertionError("stream ended before its first output item")
        out.ok = True
    except Exception as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


async def impatient(client: httpx.AsyncClient, seed: int) -> Outcome:
    """A non-streaming call to `fill` whose client gives up after 0.3 s, long before it can end."""
    out = Outcome("impatient", disconnected=True)
    body = {"model": MODEL, "messages": USER, "seed": seed, "max_tokens": DISCONNECT_MAX_TOKENS,
            "tools": FILL_TOOL, "tool_choice": {"type": "function", "function": {"name": "fill"}}}
    try:
        # Only the wait for the answer is short: the request itself always reaches the server.
        await client.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(30.0, read=0.3))
        out.problem = "a 1,200-token generation answered within 0.3 s"
    except httpx.ReadTimeout:
        out.ok = True
    except Exception as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    return out


def mix(round_seed: int) -> list[Any]:
    """The coroutines of one run: 50 clients, 10 of which go away before their answer."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    jobs: list[Any] = []

    def add(n: int, make: Any) -> None:
        for _ in range(n):
            jobs.append((make, round_seed * 100 + len(jobs)))

    add(6, lambda c, s: chat(c, "chat", s, None, None, TEXT_TOKENS))
    add(5, lambda c, s: chat(c, "chat+auto", s, TOOLS, "auto", CALL_TOKENS))
    add(5, lambda c, s: chat(c, "chat+required", s, TOOLS, "required", CALL_TOKENS))
    add(4, lambda c, s: chat(c, "chat+named", s, TOOLS, named, CALL_TOKENS))
    add(4, lambda c, s: chat_stream(c, "stream", s, None, None, TEXT_TOKENS))
    add(3, lambda c, s: chat_stream(c, "stream+auto", s, TOOLS, "auto", CALL_TOKENS))
    add(3, lambda c, s: chat_stream(c, "stream+required", s, TOOLS, "required", CALL_TOKENS))
    add(2, lambda c, s: chat_stream(c, "stream+named", s, TOOLS, named, CALL_TOKENS))
    add(2, lambda c, s: responses(c, s, True))
    add(4, lambda c, s: responses(c, s, False))
    add(2, lambda c, s: responses_stream(c, s))
    add(6, lambda c, s: disconnecting(c, s))
    add(2, lambda c, s: disconnecting_responses(c, s))
    add(2, lambda c, s: impatient(c, s))
    return jobs


async def run_clients(base: str, round_seed: int) -> list[Outcome]:
    jobs = mix(round_seed)
    # One connection per client: all of them are in flight at once.
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=len(jobs))
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120.0), limits=limits) as client:
        # Interleave kinds so the disconnecting clients wait in the queue among the others.
        order = sorted(range(len(jobs)), key=lambda i: (i * 7) % len(jobs))
        return list(await asyncio.gather(*(jobs[i][0](client, jobs[i][1]) for i in order)))


def wait_for_cancellations(base: str, target: float, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric(metrics_text(base), "octupus_cancelled_generations_total")
        if value >= target or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def wait_idle(base: str, timeout_s: float = 60) -> None:
    """Until no generation is left in the worker: a short request that needs the worker comes back."""
    r = httpx.post(base + "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 1},
                   timeout=timeout_s)
    assert r.status_code == 200, r.text


# ----------------------------------------------------------------------------- the test


def test_concurrent_mixed_load_with_disconnects(server: ServerProcess) -> None:
    base = server.base_url
    started = time.monotonic()

    def run(round_seed: int) -> tuple[list[Outcome], float]:
        before = metric(metrics_text(base), "octupus_cancelled_generations_total")
        outcomes = asyncio.run(run_clients(base, round_seed))
        failures = [f"{o.kind}: {o.problem}" for o in outcomes if not o.ok]
        assert not failures, f"{len(failures)} of {len(outcomes)} clients failed:\n" + "\n".join(failures) + \
            f"\n--- server log ---\n{server.log_tail(40)}"
        leaving = sum(o.disconnected for o in outcomes)
        after = wait_for_cancellations(base, before + leaving)
        wait_idle(base)
        # Exactly: no disconnect missed, and no finished or still-connected generation counted.
        assert metric(metrics_text(base), "octupus_cancelled_generations_total") - before == leaving, \
            f"{after - before} cancellations for {leaving} disconnects\n{server.log_tail(40)}"
        return outcomes, after - before

    # Warm-up: the same mix, so allocator arenas, caches and compiled grammars reach their steady size.
    warm, _ = run(1)
    print(f"warm-up run done at {time.monotonic() - started:.1f} s")
    assert len(warm) >= 32
    time.sleep(0.5)
    rss_warm = rss_bytes(server.proc.pid)

    first, cancelled_first = run(2)
    outcomes, cancelled = run(3)
    assert cancelled_first == cancelled == 10
    outcomes = first + outcomes
    kinds = {o.kind for o in outcomes}
    assert {"chat", "chat+auto", "chat+required", "chat+named", "stream", "stream+auto", "stream+required",
            "stream+named", "responses", "responses+tools", "responses+stream", "disconnect",
            "disconnect+responses", "impatient"} <= kinds
    # The tool_choice required/named clients must have produced calls (else the call checks checked nothing).
    assert sum(o.calls for o in warm + outcomes if o.kind.endswith(("required", "named"))) > 0

    text = metrics_text(base)
    assert metric_sum(text, "octupus_requests_total", lambda labels: 'status="200"' in labels) >= 3 * 40
    assert metric_sum(text, "octupus_requests_total", lambda labels: 'status="5' in labels) == 0
    assert metric_sum(text, "octupus_invalid_tool_calls_total") == 0

    # Still serving.
    r = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "required", "max_tokens": CALL_TOKENS,
        "seed": 5})
    assert r.status_code == 200
    check_chat_body(r.json(), {"get_weather", "set_flags"})

    time.sleep(0.5)
    rss_after = rss_bytes(server.proc.pid)
    growth = rss_after - rss_warm
    print(f"load: {len(outcomes) // 2} clients/run, RSS after warm-up {rss_warm / 2**20:.1f} MiB, after two more runs "
          f"{rss_after / 2**20:.1f} MiB (growth {growth / 2**20:+.1f} MiB), {time.monotonic() - started:.1f} s")
    assert growth <= RSS_BOUND_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB (bound {RSS_BOUND_BYTES / 2**20:.0f})"
    assert server.proc.poll() is None


# ----------------------------------------------------------------------------- regression


def test_stream_disconnect_during_send_stops_the_generation() -> None:
    """A client that leaves while a chunk is being sent: the stream's generator must be closed at once
    (its ``finally`` sets the cancel event) instead of whenever the garbage collector finds it."""
    import threading

    from serve.sse import GenerationStream

    cancel = threading.Event()
    closed = threading.Event()

    async def body() -> Any:
        try:
            for i in range(1000):
                yield f"data: {i}\n\n"
        finally:
            closed.set()

    async def scenario() -> None:
        first_sent = asyncio.Event()
        sent: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                sent.append(message["body"])
                if len(sent) == 1:
                    first_sent.set()
                else:
                    await asyncio.Event().wait()  # the second chunk never gets through

        async def receive() -> dict[str, Any]:
            await first_sent.wait()
            await asyncio.sleep(0.05)  # the disconnect arrives while the second send is blocked
            return {"type": "http.disconnect"}

        generator = body()  # held here, so only an explicit close can run its finally
        response = GenerationStream(generator, cancel)
        await asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send), 10)
        assert sent[0] == b"data: 0\n\n"
        assert cancel.is_set(), "generation not cancelled"
        assert closed.is_set(), "stream generator left open after the disconnect"
        del generator

    asyncio.run(scenario())
