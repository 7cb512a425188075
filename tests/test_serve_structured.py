"""Structured outputs: ``response_format`` on chat completions and ``text.format`` on Responses.

A tiny random model is the harshest client: whatever it emits, an answer that ends on its own must
be JSON valid against the requested schema (the grammar makes it so; the server checks it again).
The openai SDK's own ``parse`` helpers drive it on pydantic models, as applications do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from loopback_server import TEST_BACKEND, save_hermes_model, scripted_output
from loopback_server import LoopbackServer as Server
from pydantic import BaseModel

from serve.constraints.base import GrammarSpec, ToolGrammar
from serve.constraints.llguidance_engine import build_lark
from toolcall.shapes import HERMES_SHAPE, OCTUPUS_SHAPE

MODEL = "tiny"
LIMITS = ["--max-string-length", "12", "--max-integer-digits", "4", "--default-max-tokens", "96"]
SEEDS = range(5)
USER = [{"role": "user", "content": "Plan my day as JSON."}]

pytestmark = pytest.mark.usefixtures("one_thread")


class Step(BaseModel):
    action: Literal["move", "wait", "call"]
    minutes: int


class Plan(BaseModel):
    title: str
    steps: list[Step]
    urgent: bool
    note: str | None


ANSWER = {"type": "object", "properties": {"city": {"type": "string"},
                                           "unit": {"type": "string", "enum": ["c", "f"]}},
          "required": ["city", "unit"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": WEATHER}}]


DEEP: dict[str, Any] = {}
for _ in range(80):
    DEEP = {"type": "array", "items": DEEP}


def json_schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[Server]:
    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, *LIMITS])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


# ------------------------------------------------------------------ the grammar


def test_lark_answer_branch_replaces_free_text() -> None:
    spec = GrammarSpec(shape=OCTUPUS_SHAPE, special_pieces=OCTUPUS_SHAPE.special_tokens,
                       tools=(ToolGrammar("f", json.dumps(WEATHER)),), allow_text=True, allow_calls=True,
                       parallel=True, max_whitespace=2, text_schema_json=json.dumps(ANSWER))
    lark = build_lark(spec)
    assert "answer: %json" in lark and "TEXT" not in lark and "call_0" in lark
    hermes = build_lark(GrammarSpec(shape=HERMES_SHAPE, special_pieces=frozenset(), tools=(), allow_text=True,
                                    allow_calls=False, parallel=False, max_whitespace=2,
                                    text_schema_json=json.dumps(ANSWER)))
    assert "text: answer" in hermes and "calls" not in hermes
    # The answer's schema is part of the cache key: another schema is another grammar.
    assert spec.key() != GrammarSpec(**{**spec.__dict__, "text_schema_json": None}).key()


# ------------------------------------------------------------------ chat completions


def test_chat_completions_parse_on_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = cut = 0
    for seed in SEEDS:
        try:
            resp = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Plan, seed=seed,
                                                 temperature=1.0, max_tokens=300)
        except openai.LengthFinishReasonError:
            cut += 1
            continue
        message = resp.choices[0].message
        assert resp.choices[0].finish_reason == "stop" and not message.tool_calls
        assert isinstance(message.parsed, Plan), message.content
        parsed += 1
    assert parsed >= 2, f"{parsed} parsed, {cut} cut by max_tokens"


def test_json_object_and_schema_without_tools(client: openai.OpenAI) -> None:
    for seed in SEEDS:
        obj = client.chat.completions.create(model=MODEL, messages=USER, seed=seed, max_tokens=200,
                                             response_format={"type": "json_object"})
        if obj.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(obj.choices[0].message.content), dict)
        plain = client.chat.completions.create(model=MODEL, messages=USER, seed=seed, max_tokens=200,
                                               response_format=json_schema_format(ANSWER))
        assert plain.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(plain.choices[0].message.content), ANSWER)
    # A scalar schema: the answer is one JSON value, not necessarily an object.
    number = client.chat.completions.create(model=MODEL, messages=USER, seed=0, max_tokens=20, response_format=
                                            json_schema_format({"type": "integer", "minimum": 1, "maximum": 7}))
    assert number.choices[0].finish_reason == "stop" and 1 <= json.loads(number.choices[0].message.content) <= 7
    # {"type": "text"} asks for nothing: the same answer as no response_format.
    free = client.chat.completions.create(model=MODEL, messages=USER, seed=3, max_tokens=12)
    text = client.chat.completions.create(model=MODEL, messages=USER, seed=3, max_tokens=12,
                                          response_format={"type": "text"})
    assert free.choices[0].message.content == text.choices[0].message.content


def test_with_tools_auto_is_a_call_or_a_schema_answer_and_required_is_calls_only(client: openai.OpenAI) -> None:
    kinds = set()
    for seed in range(8):
        resp = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=seed, max_tokens=200,
                                              response_format=json_schema_format(ANSWER))
        choice = resp.choices[0]
        if choice.message.tool_calls:
            kinds.add("call")
            assert choice.message.content is None
            for call in choice.message.tool_calls:
                if choice.finish_reason == "tool_calls":
                    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        else:
            kinds.add("answer")
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content), ANSWER)
        for mode in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            forced = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=seed,
                                                    max_tokens=60, tool_choice=mode,
                                                    response_format=json_schema_format(ANSWER)).choices[0]
            assert forced.message.tool_calls and not forced.message.content
        none = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=seed, max_tokens=200,
                                              tool_choice="none", response_format=json_schema_format(ANSWER))
        assert none.choices[0].message.tool_calls is None
        jsonschema.validate(json.loads(none.choices[0].message.content), ANSWER)
    # A random model under auto picks both branches over 8 seeds (it did on this tiny model's weights).
    assert kinds == {"call", "answer"}


def test_streamed_structured_answer_equals_plain(client: openai.OpenAI) -> None:
    for seed in range(3):
        kwargs: dict[str, Any] = dict(model=MODEL, messages=USER, seed=seed, max_tokens=200, tools=TOOLS,
                                      response_format=json_schema_format(ANSWER))
        plain = client.chat.completions.create(**kwargs).choices[0]
        content, finish, calls = "", None, {}
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for c in chunk.choices:
                content += c.delta.content or ""
                for tc in c.delta.tool_calls or []:
                    calls.setdefault(tc.index, [None, ""])
                    calls[tc.index][0] = calls[tc.index][0] or (tc.function.name if tc.function else None)
                    calls[tc.index][1] += (tc.function.arguments or "") if tc.function else ""
                finish = c.finish_reason or finish
        assert finish == plain.finish_reason
        assert (content or None) == plain.message.content
        assert [tuple(v) for _, v in sorted(calls.items())] == [
            (c.function.name, c.function.arguments) for c in plain.message.tool_calls or []]


# ------------------------------------------------------------------ responses


def test_responses_parse_on_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = 0
    for seed in SEEDS:
        resp = client.responses.parse(model=MODEL, input="Plan my day.", text_format=Plan, extra_body={"seed": seed},
                                      max_output_tokens=300)
        if resp.status != "completed":
            continue
        assert isinstance(resp.output_parsed, Plan)
        assert resp.text.format.type == "json_schema" and resp.text.format.name == "Plan"
        parsed += 1
    assert parsed >= 2


def test_responses_json_object_streamed_equals_plain(server: Server) -> None:
    # Any object: a random model may wander past max_output_tokens; the first seed that ends is compared.
    for seed in range(8):
        body = {"model": MODEL, "input": "Give me JSON.", "seed": seed, "max_output_tokens": 200,
                "text": {"format": {"type": "json_object"}}}
        plain = httpx.post(server.base + "/v1/responses", json=body, timeout=120).json()
        assert plain["text"] == {"format": {"type": "json_object"}}
        if plain["status"] == "completed":
            break
    assert plain["status"] == "completed"
    text = plain["output"][0]["content"][0]["text"]
    assert isinstance(json.loads(text), dict)
    with httpx.stream("POST", server.base + "/v1/responses", json={**body, "stream": True}, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    streamed = events[-1]["response"]
    assert streamed["output"][0]["content"][0]["text"] == text


# ------------------------------------------------------------------ hostile or bad formats


@pytest.mark.parametrize(("response_format", "needle"), [
    (json_schema_format({"type": "object", "properties": {"a": {"type": "strin"}}}, "bad_type"), "bad_type"),
    ({"type": "json_schema", "json_schema": {"name": "no_schema"}}, "needs a 'schema'"),
    (json_schema_format({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, "cycle"), "cycle"),
    (json_schema_format({"$ref": "https://example.com/s.json"}, "remote"), "only local"),
    (json_schema_format(DEEP, "deep"), "deeper"),
    (json_schema_format({"type": "string", "pattern": "(?=a)b"}, "lookahead"), "lookahead"),
    (json_schema_format([1, 2], "not_a_dict"), "schema"),  # type: ignore[arg-type]
    ({"type": "xml"}, "response_format"),
    ({"type": "json_schema"}, "json_schema"),
])
def test_bad_response_formats_are_400s_naming_them(server: Server, response_format: Any, needle: str) -> None:
    r = httpx.post(server.base + "/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": USER, "response_format": response_format, "max_tokens": 4})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"].startswith("response_format"), error
    assert needle in error["message"], error


def test_bad_text_formats_on_responses_are_400s(server: Server) -> None:
    for fmt, needle in [({"type": "grammar"}, "grammar"), ({"type": "json_schema", "schema": {}}, "name"),
                        ({"type": "json_schema", "name": "x", "schema": {"type": "nope"}}, "'x'")]:
        r = httpx.post(server.base + "/v1/responses", timeout=60,
                       json={"model": MODEL, "input": "hi", "text": {"format": fmt}, "max_output_tokens": 4})
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"]["message"] and r.json()["error"]["param"].startswith("text.format")


def test_a_tool_schema_fault_still_names_the_tool(server: Server) -> None:
    """With both a tool and a response_format, the 400 names whichever schema the engine refused."""
    bad_tool = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(?=a)b"}}}}}]
    r = httpx.post(server.base + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": USER, "tools": bad_tool, "response_format": json_schema_format(ANSWER)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


@pytest.mark.skipif(TEST_BACKEND == "vllm", reason="a local matcher cannot steer vLLM's sampling")
def test_an_invalid_answer_from_the_engine_is_a_500_never_a_result(tiny_model_dir: Path) -> None:
    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, *LIMITS],
                 core_hook=scripted_output('<|CONTENT|>{"city": 5, "unit": "c"}'))
    try:
        for stream in (False, True):
            r = httpx.post(srv.base + "/v1/chat/completions", timeout=60, json={
                "model": MODEL, "messages": USER, "stream": stream, "response_format": json_schema_format(ANSWER)})
            if not stream:
                assert r.status_code == 500
                assert "structured answer" in r.json()["error"]["message"]
            else:
                assert '"finish_reason": "stop"' not in r.text and "structured answer" in r.text
    finally:
        srv.stop()


# ------------------------------------------------------------------ the other format and engine


def test_hermes_format_and_lm_format_enforcer(smollm2_tokenizer: Any, tiny_model_dir: Path,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    hermes_dir = save_hermes_model(smollm2_tokenizer, tmp_path_factory.mktemp("hermes_structured"))
    runs = [["--model", str(hermes_dir), "--format", "hermes"],
            ["--model", str(tiny_model_dir), "--engine", "lm-format-enforcer"]]
    for argv in runs:
        srv = Server([*argv, "--served-model-name", MODEL, *LIMITS])
        try:
            client = srv.client()
            done = 0
            for seed in range(3):
                resp = client.chat.completions.create(model=MODEL, messages=USER, seed=seed, max_tokens=200,
                                                      response_format=json_schema_format(ANSWER))
                if resp.choices[0].finish_reason == "stop":
                    jsonschema.validate(json.loads(resp.choices[0].message.content), ANSWER)
                    done += 1
            assert done, argv
            if "lm-format-enforcer" in argv:
                r = httpx.post(srv.base + "/v1/chat/completions", timeout=60, json={
                    "model": MODEL, "messages": USER, "response_format": json_schema_format(
                        {"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniq")})
                assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
                assert "uniqueItems" in r.json()["error"]["message"]
                # Schemas the library itself cannot parse, or fails on only mid-generation: 400s too.
                for schema in ({"description": "any value"}, {"enum": [1, "a"]},
                               {"type": "object", "properties": {"a": True}}):
                    r = httpx.post(srv.base + "/v1/chat/completions", timeout=60, json={
                        "model": MODEL, "messages": USER, "response_format": json_schema_format(schema, "odd")})
                    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
        finally:
            srv.stop()


# ------------------------------------------------------------------ large tool sets


def test_large_tool_sets_compile_once_and_the_bench_reports_them(smollm2_format_tokenizer: Any) -> None:
    """The toolset bench's own measurement on 8 and 130 tools of the SmolLM2 vocabulary: a repeated tool
    set compiles nothing, every first request compiles, and a call to the last tool replays through the
    grammar (its per-token times are reported). Times are the benchmark's business, not asserted here."""
    from bench.toolset_bench import Bench, measure, tool_pool

    pool = tool_pool()
    assert len(pool) >= 400 and len({t["function"]["name"] for t in pool}) == len(pool)
    bench = Bench(smollm2_format_tokenizer, "octupus", "llguidance")
    for size in (8, 130):
        row = measure(bench, pool, size, trials=1)
        assert row["compiled_again"] == 0 and row["tools"] == size
        assert row["prompt_tokens"] > 20 * size and row["mask_us_p99"] > 0
    assert "meets_target" in measure(bench, pool, 128, trials=1)


def test_max_tools_is_a_server_flag(tiny_model_dir: Path) -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": WEATHER}} for i in range(200)]
    body = {"model": MODEL, "messages": USER, "tools": tools, "max_tokens": 24,
            "tool_choice": {"type": "function", "function": {"name": "tool_199"}}}
    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, *LIMITS, "--max-tools", "256",
                  "--max-context", "16384", "--grammar-cache", "1"])
    try:
        r = httpx.post(srv.base + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert [c["function"]["name"] for c in r.json()["choices"][0]["message"]["tool_calls"]] == ["tool_199"]
        over = httpx.post(srv.base + "/v1/chat/completions", json={**body, "tools": tools + tools[:57]}, timeout=120)
        assert over.status_code == 400 and over.json()["error"]["code"] == "too_many_tools"
        assert "256" in over.json()["error"]["message"]
    finally:
        srv.stop()


def test_schema_checks_never_crash_on_odd_input() -> None:
    from serve.constraints.schema import _patterns, meta_check
    from serve.core import validate_answer
    from serve.errors import BadRequest

    schema = {"type": "object", "properties": {"enum": {"type": "string", "pattern": "^a"}},
              "enum": [{"pattern": "(unclosed"}], "default": {"pattern": "["}}
    assert _patterns(schema) == ["^a"]  # a property named enum is a schema; enum values are data
    for bad in ({"$schema": "http://example.com/unknown-draft#"}, {"type": "string", "pattern": "(unclosed"}):
        with pytest.raises(BadRequest, match="invalid JSON schema"):
            meta_check(bad, "response_format 'x'", "response_format")
    deep = "[" * 100_000 + "]" * 100_000
    assert validate_answer(deep, {}) is not None  # nested too deeply: a reason, not a RecursionError
    assert validate_answer('{"a": 1}', {"type": "object"}) is None


def test_grammar_cache_flag_takes_no_negative_size() -> None:
    from serve.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--grammar-cache", "-1"])
    assert build_parser().parse_args(["--model", "m", "--grammar-cache", "0"]).grammar_cache == 0
