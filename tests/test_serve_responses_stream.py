"""POST /v1/responses with `stream: true`: OpenAI's event sequence, driven by the openai SDK's own
stream helper, equal to the plain answer for the same request and seed; what agent SDKs send is
accepted, what the server does not have is a clear 400; the original project's unversioned base URL.

Tiny random model on loopback (``tests/loopback_server.py``); ``tool_choice`` required makes it call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from loopback_server import LoopbackServer as Server
from responses_sse import assembled, stream_events, without_ids

MODEL = "tiny"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather", "parameters": WEATHER},
         {"type": "function", "name": "get", "parameters": WEATHER}]
LIMITS = ["--max-string-length", "12", "--max-integer-digits", "4", "--default-max-tokens", "96"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[Server]:
    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, *LIMITS])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def test_sdk_stream_helper_assembles_the_plain_response(client: openai.OpenAI, server: Server) -> None:
    completed = 0
    for seed in range(4):
        kwargs: dict[str, Any] = dict(model=MODEL, input="weather in Oslo?", tools=TOOLS, tool_choice="required",
                                      temperature=1.0, extra_body={"seed": seed})
        plain = client.responses.create(**kwargs)
        with client.responses.stream(**kwargs) as stream:
            events = list(stream)
            final = stream.get_final_response() if plain.status == "completed" else None
        assert events[-1].type == f"response.{plain.status}"
        names_added = [e.item.name for e in events if e.type == "response.output_item.added"]
        assert names_added == [o.name for o in plain.output]  # each name sent once, whole
        if final is None:
            continue
        assert without_ids(final.model_dump(mode="json", exclude_none=True)) == \
            without_ids(plain.model_dump(mode="json", exclude_none=True))
        for item in final.output:
            assert item.type == "function_call" and item.status == "completed"
            jsonschema.validate(json.loads(item.arguments), WEATHER)
            completed += 1
        assert final.usage.output_tokens == plain.usage.output_tokens > 0
    assert completed, "no seed completed a call"


def test_raw_events_match_the_sdk_types_and_the_plain_answer(server: Server) -> None:
    """Every event validates as the SDK's type; deltas rebuild the items; the terminal response is the
    plain answer (calls, a text answer, a text answer cut by max_output_tokens)."""
    bodies = [
        {"model": MODEL, "input": "hi", "tools": TOOLS, "tool_choice": "required", "seed": 3, "temperature": 1.0},
        {"model": MODEL, "input": "hi", "seed": 1, "temperature": 1.0, "max_output_tokens": 40},
        {"model": MODEL, "input": "hi", "seed": 2, "max_output_tokens": 3},
    ]
    kinds = set()
    for body in bodies:
        events = stream_events(server.base, body)
        final = assembled(events)
        plain = httpx.post(server.base + "/v1/responses", json=body, timeout=60).json()
        assert without_ids(final) == without_ids(plain)
        assert final["usage"]["total_tokens"] == final["usage"]["input_tokens"] + final["usage"]["output_tokens"]
        assert events[0]["response"]["usage"] is None and events[0]["response"]["output"] == []
        for item in final["output"]:
            kinds.add((item["type"], final["status"]))
            if item["type"] == "message":
                assert item["status"] == ("incomplete" if final["status"] == "incomplete" else "completed")
        if final["status"] == "incomplete":
            assert final["incomplete_details"] == {"reason": "max_output_tokens"}
            assert events[-1]["type"] == "response.incomplete"
    assert ("message", "incomplete") in kinds and ("function_call", "completed") in kinds


def test_agent_sdk_request_fields_are_accepted(server: Server) -> None:
    body = {"model": MODEL, "instructions": "Be brief.", "input": [{"role": "user", "content": "hi"}],
            "tools": TOOLS, "tool_choice": {"type": "function", "name": "get"}, "parallel_tool_calls": False,
            "max_output_tokens": 60, "text": {"format": {"type": "text"}}, "reasoning": {"effort": "low"},
            "store": False, "include": [], "truncation": "disabled", "metadata": {"run": "x"}, "seed": 0}
    events = stream_events(server.base, body)
    final = assembled(events)
    assert final["tool_choice"] == {"type": "function", "name": "get"} and final["parallel_tool_calls"] is False
    calls = [item for item in final["output"] if item["type"] == "function_call"]
    assert len(calls) <= 1 and all(c["name"] == "get" for c in calls)
    assert final["instructions"] == "Be brief." and final["store"] is False


@pytest.mark.parametrize(("extra", "param", "match"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id", "stores no responses"),
    ({"conversation": "conv_1"}, "conversation", "stores no conversations"),
    ({"tools": [{"type": "web_search"}]}, "tools", "tool type 'web_search' is not supported"),
    ({"tools": [{"type": "function"}]}, "tools", "needs a 'name'"),
    ({"tools": TOOLS, "tool_choice": {"type": "web_search_preview"}}, "tool_choice", "not supported"),
    ({"text": {"format": {"type": "grammar", "name": "x"}}}, "text.format", "'grammar' is not supported"),
    ({"include": ["message.output_text.logprobs"]}, "include", "not supported"),
    ({"background": True}, "background", "background"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_unsupported_features_are_a_clear_400(server: Server, extra: dict[str, Any], param: str, match: str,
                                              stream: bool) -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 4, "stream": stream, **extra}
    r = httpx.post(server.base + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and match in error["message"], error


def test_disconnect_cancels_a_responses_stream(server: Server) -> None:
    def cancelled() -> float:
        for line in httpx.get(server.base + "/metrics").text.splitlines():
            if line.startswith("octupus_cancelled_generations_total"):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    body = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 5000, "seed": 0}
    with httpx.stream("POST", server.base + "/v1/responses", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if "response.in_progress" in line:
                break  # leave before the answer
    deadline = time.time() + 30
    while cancelled() <= before and time.time() < deadline:
        time.sleep(0.1)
    assert cancelled() == before + 1


def test_unversioned_base_url_answers_like_v1(server: Server) -> None:
    """The original project's `OPENAI_BASE_URL=http://localhost:8000` (no /v1) with the official client."""
    bare = openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in bare.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": "weather?"}]
    chat_tools = [{"type": "function", "function": {"name": t["name"], "parameters": t["parameters"]}} for t in TOOLS]
    kwargs: dict[str, Any] = dict(model=MODEL, messages=messages, tools=chat_tools, tool_choice="required", seed=5,
                                  temperature=1.0)
    a = bare.chat.completions.create(**kwargs).choices[0]
    b = server.client().chat.completions.create(**kwargs).choices[0]
    assert a.finish_reason == b.finish_reason
    assert [(c.function.name, c.function.arguments) for c in a.message.tool_calls or []] == \
        [(c.function.name, c.function.arguments) for c in b.message.tool_calls or []]
    body = {"model": MODEL, "input": "hi", "tools": TOOLS, "tool_choice": "required", "seed": 5}
    sdk_body = {k: v for k, v in body.items() if k != "seed"} | {"extra_body": {"seed": 5}}
    assert without_ids(bare.responses.create(**sdk_body).model_dump(mode="json")) == \
        without_ids(server.client().responses.create(**sdk_body).model_dump(mode="json"))
    assert without_ids(assembled(stream_events(server.base, body, path="/responses"))) == \
        without_ids(assembled(stream_events(server.base, body)))
    assert httpx.post(server.base + "/responses", json={"model": "nope", "input": "x"}).status_code == 404


def test_unversioned_routes_need_the_key_too(tiny_model_dir: Path) -> None:
    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, "--api-key", "k", *LIMITS])
    try:
        for path, body in (("/models", None), ("/chat/completions", {"model": MODEL, "messages": [
                {"role": "user", "content": "x"}]}), ("/responses", {"model": MODEL, "input": "x"})):
            for prefix in ("", "/v1"):
                r = httpx.request("GET" if body is None else "POST", srv.base + prefix + path, json=body, timeout=30)
                assert r.status_code == 401, (prefix + path, r.status_code)
        keyed = openai.OpenAI(base_url=srv.base, api_key="k", max_retries=0, timeout=60)
        assert keyed.responses.create(model=MODEL, input="x", max_output_tokens=2).usage.output_tokens == 2
        assert httpx.get(srv.base + "/health").status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize(("script", "detail"), [
    ('<|FUNCTION_CALL|>get<|PARAMETERS|>{"city": 5}', "city"),  # fails the schema
    ('<|FUNCTION_CALL|>get<|PARAMETERS|>{"city": "x"} more', "after the complete arguments"),  # text after a call
])
def test_a_faulty_engine_fails_the_response(tiny_model_dir: Path, script: str, detail: str) -> None:
    """An engine that lets a bad call through: the plain answer is a 500 naming the engine, the stream
    ends in `response.failed` and never marks the call complete. Text after a call's closed arguments
    is caught while streaming, before the client could take the call as complete."""
    from loopback_server import scripted_output

    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, *LIMITS],
                 core_hook=scripted_output(script))
    try:
        body = {"model": MODEL, "input": "hi", "tools": TOOLS, "tool_choice": "required"}
        plain = httpx.post(srv.base + "/v1/responses", json=body, timeout=60)
        assert plain.status_code == 500 and "llguidance" in plain.json()["error"]["message"]
        events = stream_events(srv.base, body)
        failed = events[-1]
        assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
        assert "llguidance" in failed["response"]["error"]["message"] and detail in failed["response"]["error"]["message"]
        assert failed["response"]["error"]["code"] == "server_error"
        assert all(item["status"] == "incomplete" for item in failed["response"]["output"])
        assert not any(e["type"] == "response.function_call_arguments.done" for e in events)
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "tools": [{"type": "function", "function": {"name": "get", "parameters": WEATHER}}],
                "tool_choice": "required"}
        with httpx.stream("POST", srv.base + "/v1/chat/completions", json=chat, timeout=60) as r:
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
        assert all(ch.get("finish_reason") != "tool_calls" for c in chunks for ch in c.get("choices", []))
        assert detail in chunks[-1]["error"]["message"]
    finally:
        srv.stop()
