"""End-to-end: `python -m serve`'s app on loopback with a tiny random model, driven by the `openai` client.

A random model is the harshest client of the grammar: whatever it emits, every call that reaches
the client must be complete and valid against its schema. These tests check that on many seeds,
for every tool_choice mode, and the API's behaviour around it (streaming, errors, key, metrics).

With ``OCTUPUS_TEST_BACKEND=vllm`` (``make test-vllm``) the same tests run against the vLLM backend.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from loopback_server import TEST_BACKEND, is_cut, save_hermes_model, scripted_output
from loopback_server import LoopbackServer as Server

MODEL = "tiny"
SEEDS = range(6)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
NESTED = {"type": "object", "properties": {
    "trip": {"type": "object", "properties": {
        "stops": {"type": "array", "items": {"type": "string", "enum": ["paris", "rome", "oslo"]}, "maxItems": 3},
        "budget": {"type": "number"}}, "required": ["stops"]},
    "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}}, "required": ["trip"]}


def tool(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": schema}}


PREFIX_TOOLS = [tool("get", WEATHER), tool("get_weather", WEATHER), tool("get_weather_forecast", WEATHER)]
ALL_TOOLS = PREFIX_TOOLS + [tool("plan_trip", NESTED)]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in ALL_TOOLS}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


# Tiny models: intra-op threads only add contention on a busy 2-core machine (conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


LIMITS = ["--max-string-length", "12", "--max-integer-digits", "4", "--default-max-tokens", "96"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny model; for vLLM the same recipe with 32-wide heads, the narrowest its CPU attention takes."""
    if TEST_BACKEND != "vllm":
        return tiny_model_dir
    from stages.edit_tokenizer import edit_model, save_edited
    from stages.hf_assets import build_tiny_model, train_tiny_bpe_tokenizer
    from toolcall.tokens import EMBEDDING_INIT_WORDS

    tokenizer = train_tiny_bpe_tokenizer()
    model = build_tiny_model(tokenizer, arch="qwen2", tie_word_embeddings=True, num_heads=2, num_kv_heads=1)
    summary = edit_model(model, tokenizer, dict(EMBEDDING_INIT_WORDS), pad_to_multiple_of=64)
    out = tmp_path_factory.mktemp("tiny_model_vllm")
    save_edited(model, tokenizer, out, summary)
    return out


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Server]:
    srv = Server(["--model", str(model_dir), "--served-model-name", MODEL, *LIMITS])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def check_calls(choice: Any, allowed: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every returned call is named from the request and complete and valid, except a last call
    cut by max_tokens (finish_reason length, arguments not JSON); returns the complete (name, args)."""
    calls = choice.message.tool_calls or []
    if choice.finish_reason == "tool_calls":
        assert calls, "finish_reason tool_calls without calls"
    out = []
    for i, call in enumerate(calls):
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in allowed
        if choice.finish_reason == "length" and i == len(calls) - 1 and is_cut(call.function.arguments):
            break
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def test_health_and_models(server: Server, client: openai.OpenAI) -> None:
    assert httpx.get(server.base + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [MODEL]


@pytest.mark.parametrize("mode", ["auto", "required", "named", "none"])
def test_tool_choice_modes_only_valid_calls(client: openai.OpenAI, mode: str) -> None:
    choice_arg: Any = {"type": "function", "function": {"name": "get"}} if mode == "named" else mode
    finish = set()
    for seed in SEEDS:
        resp = client.chat.completions.create(model=MODEL, messages=USER, tools=ALL_TOOLS, tool_choice=choice_arg,
                                              seed=seed, temperature=1.0)
        choice = resp.choices[0]
        finish.add(choice.finish_reason)
        calls = check_calls(choice, set(SCHEMAS))
        if mode == "none":
            assert not calls and choice.finish_reason in ("stop", "length")
            assert choice.message.content is not None
        if mode in ("required", "named"):
            assert choice.message.content is None
            assert choice.finish_reason in ("tool_calls", "length")
        if mode == "named":
            assert [n for n, _ in calls] in ([], ["get"])  # exactly the named function, once
        assert resp.usage.completion_tokens <= 96 + 1
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    if mode in ("required", "named"):
        assert "tool_calls" in finish, "no seed completed a call: limits too loose for the test model?"


def test_parallel_tool_calls_false_gives_at_most_one_call(client: openai.OpenAI) -> None:
    counts = []
    for seed in range(10):
        resp = client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, tool_choice="required",
                                              parallel_tool_calls=False, seed=seed)
        calls = check_calls(resp.choices[0], {"get", "get_weather", "get_weather_forecast"})
        counts.append(len(calls))
    assert max(counts) == 1


def test_nested_array_enum_schema_calls_validate(client: openai.OpenAI) -> None:
    completed = 0
    for seed in SEEDS:
        resp = client.chat.completions.create(
            model=MODEL, messages=USER, tools=ALL_TOOLS, seed=seed,
            tool_choice={"type": "function", "function": {"name": "plan_trip"}})
        calls = check_calls(resp.choices[0], {"plan_trip"})
        completed += bool(calls)
        for _, args in calls:
            assert set(args["trip"]["stops"]) <= {"paris", "rome", "oslo"}
    assert completed


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    seen_call = False
    for seed in SEEDS:
        kwargs = dict(model=MODEL, messages=USER, tools=ALL_TOOLS, seed=seed, temperature=1.0)
        full = client.chat.completions.create(**kwargs).choices[0]
        content, calls, finish, names_sent = "", {}, None, []
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for ch in chunk.choices:
                delta = ch.delta
                content += delta.content or ""
                for tc in delta.tool_calls or []:
                    if tc.id:
                        assert tc.index not in calls, "a call started twice"
                        calls[tc.index] = [tc.id, tc.function.name, ""]
                        names_sent.append(tc.function.name)
                    else:
                        assert tc.function.name is None, "name sent again"
                    calls[tc.index][2] += tc.function.arguments or ""
                finish = ch.finish_reason or finish
        assert finish == full.finish_reason
        expected = [(c.function.name, c.function.arguments) for c in full.message.tool_calls or []]
        got = [(n, a) for _, n, a in (calls[i] for i in sorted(calls))]
        # Also when cut by max_tokens: the stream and the plain answer hold the same calls.
        assert got == expected
        assert (content or None) == full.message.content
        seen_call |= bool(expected)
        assert all(n in SCHEMAS for n in names_sent)  # names arrive whole
    assert seen_call


def test_sse_framing_and_usage(server: Server) -> None:
    body = {"model": MODEL, "messages": USER, "tools": PREFIX_TOOLS, "stream": True, "seed": 1, "max_tokens": 20,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] <= 21
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_max_tokens_cut_is_length_and_never_a_complete_call(client: openai.OpenAI) -> None:
    for seed in SEEDS:
        resp = client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, tool_choice="required",
                                              seed=seed, max_completion_tokens=4)
        choice = resp.choices[0]
        assert choice.finish_reason == "length"
        # A call whose name was generated is returned with its cut arguments, which are not JSON.
        assert all(is_cut(c.function.arguments) for c in choice.message.tool_calls or [])
        assert check_calls(choice, set(SCHEMAS)) == []
        assert resp.usage.completion_tokens == 4


def test_n_seed_and_stop(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, messages=USER, max_tokens=30, temperature=1.0)
    a = client.chat.completions.create(**kw, seed=7, n=2)
    b = client.chat.completions.create(**kw, seed=7, n=2)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    text = a.choices[0].message.content
    assert len(text) > 6
    stop = text[3:6]
    cut = client.chat.completions.create(**kw, seed=7, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.find(stop)]


def test_no_tools_is_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10, seed=0)
    assert resp.choices[0].message.tool_calls is None
    assert isinstance(resp.choices[0].message.content, str)


def test_multi_turn_with_tool_results(client: openai.OpenAI) -> None:
    def ask(result: str, **kw: Any) -> Any:
        messages = USER + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": result},
        ]
        return client.chat.completions.create(model=MODEL, messages=messages, tools=PREFIX_TOOLS, **kw)

    # The tool's result reaches the prompt: a longer result, a longer prompt (the rest is the same).
    short = ask("sunny", max_tokens=1, seed=3)
    longer = ask("sunny, 21C, a light wind from the west and 40 percent humidity", max_tokens=1, seed=3)
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens + 5
    # After a result the next turn may call again: only valid calls of the offered tools.
    finish = set()
    for seed in SEEDS:
        choice = ask("sunny, 21C", tool_choice="required", seed=seed, temperature=1.0).choices[0]
        check_calls(choice, set(SCHEMAS))
        assert choice.finish_reason in ("tool_calls", "length")
        finish.add(choice.finish_reason)
    assert "tool_calls" in finish, "no seed completed a call after a tool result"


def expect_error(status: int, fn: Any, match: str) -> dict[str, Any]:
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    assert info.value.status_code == status, info.value.response.text
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert match in body["error"]["message"], body
    return body["error"]


def test_client_errors_are_4xx(client: openai.OpenAI, server: Server) -> None:
    c = client.chat.completions
    expect_error(400, lambda: c.create(model=MODEL, messages=[{"role": "tool", "tool_call_id": "x", "content": "r"}]),
                 "not a pending tool call")
    expect_error(400, lambda: c.create(model=MODEL, messages=USER + [{"role": "system", "content": "late"}]),
                 "system message must come before")
    expect_error(400, lambda: c.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "get_w"}}),
                 "not among the tools")
    expect_error(400, lambda: c.create(model=MODEL, messages=USER, tool_choice="required"), "needs tools")
    bad = tool("bad", {"type": "object", "properties": {"a": {"type": "strng"}}})
    expect_error(400, lambda: c.create(model=MODEL, messages=USER, tools=[bad]), "invalid JSON schema")
    unenforceable = tool("uniq", {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}})
    err = expect_error(400, lambda: c.create(model=MODEL, messages=USER, tools=[unenforceable]), "uniqueItems")
    assert "llguidance" in err["message"]
    expect_error(400, lambda: c.create(model=MODEL, messages=[{"role": "user", "content": "word " * 5000}]),
                 "context")
    expect_error(404, lambda: c.create(model="nope", messages=USER), "does not exist")
    expect_error(400, lambda: c.create(model=MODEL, messages=USER, n=0), "n")
    r = httpx.post(server.base + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "error" in r.json()
    metrics = httpx.get(server.base + "/metrics").text
    assert 'octupus_rejected_requests_total{reason="unenforceable_schema"}' in metrics


def test_responses_endpoint(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]}
             for t in PREFIX_TOOLS]
    completed = 0
    for seed in SEEDS:
        resp = client.responses.create(
            model=MODEL, store=False, temperature=1.0, tools=tools, tool_choice="required", extra_body={"seed": seed},
            input=[{"role": "user", "content": "weather in Oslo?"},
                   {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": '{"city": "Oslo"}'},
                   {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
                   {"role": "user", "content": "and tomorrow?"}])
        assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
        for item in resp.output:
            assert item.type == "function_call"
            assert item.call_id.startswith("call_") and item.name in SCHEMAS
            if item.status == "incomplete":  # cut by the output cap inside its arguments
                assert resp.status == "incomplete" and item is resp.output[-1] and is_cut(item.arguments)
                continue
            assert item.status == "completed"
            jsonschema.validate(json.loads(item.arguments), SCHEMAS[item.name])
            completed += 1
        assert resp.status in ("completed", "incomplete")
    assert completed
    text = client.responses.create(model=MODEL, input="hello", max_output_tokens=8)
    assert text.output[0].type == "message" and text.status == "incomplete"


def test_concurrent_requests_queue(client: openai.OpenAI) -> None:
    results: list[Any] = []

    def one(seed: int) -> None:
        results.append(client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, seed=seed,
                                                      max_tokens=30))

    threads = [threading.Thread(target=one, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3


def test_disconnect_cancels_generation(server: Server) -> None:
    def cancelled() -> float:
        for line in httpx.get(server.base + "/metrics").text.splitlines():
            if line.startswith("octupus_cancelled_generations_total"):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    body = {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 5000, "seed": 0}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as r:
        for _ in r.iter_lines():
            break  # go away after the first event
    deadline = time.time() + 30
    while cancelled() <= before and time.time() < deadline:
        time.sleep(0.1)
    assert cancelled() == before + 1


def test_api_key(model_dir: Path) -> None:
    srv = Server(["--model", str(model_dir), "--served-model-name", MODEL, "gpt-4o-2024-11-20-FC",
                  "--api-key", "s3cret", *LIMITS])
    try:
        expect_error(401, lambda: srv.client("wrong").models.list(), "API key")
        r = httpx.post(srv.base + "/v1/chat/completions", json={"model": MODEL, "messages": USER})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        client = srv.client("s3cret")
        assert [m.id for m in client.models.list().data] == [MODEL, "gpt-4o-2024-11-20-FC"]
        resp = client.responses.create(model="gpt-4o-2024-11-20-FC", input="hi", max_output_tokens=4)
        assert resp.usage.output_tokens == 4
        assert httpx.get(srv.base + "/health").status_code == 200  # probes need no key
    finally:
        srv.stop()


def test_invalid_call_is_a_server_error_never_a_result(model_dir: Path) -> None:
    """A faulty engine must be caught by validation: 500 naming the engine, counted, no call returned."""
    from serve.constraints.base import ToolGrammar

    hook = scripted_output('<|FUNCTION_CALL|>get<|PARAMETERS|>{"city": 5}')

    def wrong_grammar_hook(core: Any) -> Any:
        # vLLM samples inside its own engine, so a local matcher cannot steer it: the fault is put
        # into the grammar vLLM receives instead (city as a one-digit number, never a string).
        compile_spec = core.engine._compile
        wrong = json.dumps({"type": "object", "properties": {"city": {"type": "integer", "minimum": 0, "maximum": 9}},
                            "required": ["city"], "additionalProperties": False})
        core.engine._compile = lambda spec: compile_spec(dataclasses.replace(
            spec, tools=tuple(ToolGrammar(name=t.name, schema_json=wrong) for t in spec.tools)))
        return core

    srv = Server(["--model", str(model_dir), "--served-model-name", MODEL, *LIMITS],
                 core_hook=wrong_grammar_hook if TEST_BACKEND == "vllm" else hook)
    try:
        client = srv.client()
        for stream in (False, True):
            kwargs = dict(model=MODEL, messages=USER, tools=PREFIX_TOOLS, tool_choice="required")
            if not stream:
                with pytest.raises(openai.InternalServerError) as info:
                    client.chat.completions.create(**kwargs)
                message = info.value.response.json()["error"]["message"]
            else:
                body = {**kwargs, "stream": True}
                with httpx.stream("POST", srv.base + "/v1/chat/completions", json=body, timeout=60) as r:
                    events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln and ln != "data: [DONE]"]
                assert all(ch.get("finish_reason") != "tool_calls" for e in events for ch in e.get("choices", []))
                message = events[-1]["error"]["message"]
            assert "llguidance" in message and "city" in message
        metrics = httpx.get(srv.base + "/metrics").text
        assert 'octupus_invalid_tool_calls_total{engine="llguidance"} 2.0' in metrics
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def hermes_model_dir(smollm2_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hermes_model(smollm2_tokenizer, tmp_path_factory.mktemp("hermes_tiny"))


def test_hermes_format_on_chatml_model(hermes_model_dir: Path) -> None:
    srv = Server(["--model", str(hermes_model_dir), "--served-model-name", MODEL, "--format", "auto", *LIMITS])
    try:
        client = srv.client()
        completed = 0
        for seed in range(4):
            resp = client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, seed=seed,
                                                  tool_choice="required")
            completed += len(check_calls(resp.choices[0], {"get", "get_weather", "get_weather_forecast"}))
        assert completed
        none = client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, tool_choice="none",
                                              seed=0, max_tokens=12)
        assert none.choices[0].message.tool_calls is None
        assert not none.choices[0].message.content.startswith("<tool_call>")
    finally:
        srv.stop()


def test_lm_format_enforcer_engine(model_dir: Path) -> None:
    """The second engine behind the same interface: a call reaching the client is always valid."""
    srv = Server(["--model", str(model_dir), "--served-model-name", MODEL, "--engine", "lm-format-enforcer",
                  *LIMITS])
    try:
        client = srv.client()
        valid = faults = 0
        for seed in range(5):
            for choice_arg in ("required", {"type": "function", "function": {"name": "get"}}):
                try:
                    resp = client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, seed=seed,
                                                          tool_choice=choice_arg, parallel_tool_calls=False)
                except openai.InternalServerError as exc:  # a known leak of this engine, caught by validation
                    assert "lm-format-enforcer" in exc.response.json()["error"]["message"]
                    faults += 1
                    continue
                calls = check_calls(resp.choices[0], {"get", "get_weather", "get_weather_forecast"})
                assert len(calls) <= 1
                valid += len(calls)
        # A random model provokes this engine's known leaks (raw control characters, trailing
        # commas): each one must surface as a counted 500, never as a call.
        assert valid + faults > 0
        metrics = httpx.get(srv.base + "/metrics").text
        assert f'octupus_invalid_tool_calls_total{{engine="lm-format-enforcer"}} {float(faults)}' in metrics
        text = client.chat.completions.create(model=MODEL, messages=USER, tools=PREFIX_TOOLS, tool_choice="none",
                                              seed=0, max_tokens=8)
        assert text.choices[0].message.tool_calls is None
    finally:
        srv.stop()
