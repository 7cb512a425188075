"""The details agent clients trip on, each checked in both formats (octupus, hermes) and on both
endpoints (chat completions, responses): call ids unique across the conversation, ``"{}"`` for a tool
without parameters, tool results as arrays of text parts, ``content: null`` beside calls, and a
result answering no call refused with a 400 that names its id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback_server import LoopbackServer, save_hermes_model

MODEL = "tiny"
LIMITS = ["--max-string-length", "12", "--max-integer-digits", "4", "--default-max-tokens", "48"]
ENDPOINTS = ["chat", "responses"]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["octupus", "hermes"])
def server(request: pytest.FixtureRequest, tiny_model_dir: Path, smollm2_tokenizer: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    if request.param == "octupus":
        model = tiny_model_dir
    else:
        model = save_hermes_model(smollm2_tokenizer, tmp_path_factory.mktemp("hermes_details"))
    srv = LoopbackServer(["--model", str(model), "--served-model-name", MODEL, "--format", request.param, *LIMITS])
    yield srv
    srv.stop()


def chat_tool(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name, "description": f"{name} tool"}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


def post(srv: LoopbackServer, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/responses"
    return httpx.post(srv.base + path, json={"model": MODEL, **body}, timeout=120)


def history(endpoint: str, *, result: Any = "21C", call_ids: tuple[str, ...] = ("call_1",),
            answers: tuple[str, ...] | None = None, content: Any = None) -> dict[str, Any]:
    """A conversation in which the assistant called get_weather (once per id) and got results back,
    in the endpoint's own shape, with the tools and a tool_choice that forces a further call."""
    answers = call_ids if answers is None else answers
    args = json.dumps({"city": "Paris"})
    if endpoint == "chat":
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": content,
             "tool_calls": [{"id": i, "type": "function", "function": {"name": "get_weather", "arguments": args}}
                            for i in call_ids]}]
        messages += [{"role": "tool", "tool_call_id": i, "content": result} for i in answers]
        messages.append({"role": "user", "content": "And again?"})
        return {"messages": messages, "tools": [chat_tool("get_weather", WEATHER)], "tool_choice": "required"}
    items: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    items += [{"type": "function_call", "call_id": i, "name": "get_weather", "arguments": args} for i in call_ids]
    items += [{"type": "function_call_output", "call_id": i, "output": result} for i in answers]
    items.append({"role": "user", "content": "And again?"})
    return {"input": items, "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER}],
            "tool_choice": "required"}


def calls_of(endpoint: str, body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of an answer's calls."""
    if endpoint == "chat":
        return [(c["id"], c["function"]["name"], c["function"]["arguments"])
                for c in body["choices"][0]["message"].get("tool_calls") or []]
    return [(o["call_id"], o["name"], o["arguments"]) for o in body["output"] if o["type"] == "function_call"]


def prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    return body["usage"]["prompt_tokens" if endpoint == "chat" else "input_tokens"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_call_ids_are_unique_across_the_conversation(server: LoopbackServer, endpoint: str) -> None:
    seen = {"call_1", "call_2"}
    for seed in range(3):
        body = history(endpoint, call_ids=("call_1", "call_2"))
        r = post(server, endpoint, {**body, "seed": seed, "temperature": 1.0, "max_tokens" if endpoint == "chat"
                                    else "max_output_tokens": 48})
        assert r.status_code == 200, r.text
        ids = [i for i, _, _ in calls_of(endpoint, r.json())]
        assert ids and not set(ids) & seen, ids  # never an id of the history, or of an earlier answer
        assert len(set(ids)) == len(ids)
        seen |= set(ids)
    # Two calls of one message sharing an id: a tool result could not say which it answers.
    r = post(server, endpoint, history(endpoint, call_ids=("call_1", "call_1"), answers=("call_1",)))
    assert r.status_code == 400 and "call_1" in r.json()["error"]["message"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("parameters", [None, {"type": "object", "properties": {}}], ids=["omitted", "empty"])
def test_a_tool_without_parameters_gets_an_empty_object(server: LoopbackServer, endpoint: str,
                                                        parameters: dict[str, Any] | None) -> None:
    for seed in range(3):
        if endpoint == "chat":
            body: dict[str, Any] = {"messages": [{"role": "user", "content": "ping"}],
                                    "tools": [chat_tool("ping", parameters)],
                                    "tool_choice": {"type": "function", "function": {"name": "ping"}}}
        else:
            tool = {"type": "function", "name": "ping", **({"parameters": parameters} if parameters else {})}
            body = {"input": "ping", "tools": [tool], "tool_choice": {"type": "function", "name": "ping"}}
        r = post(server, endpoint, {**body, "seed": seed, "temperature": 1.0})
        assert r.status_code == 200, r.text
        assert [(name, args) for _, name, args in calls_of(endpoint, r.json())] == [("ping", "{}")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_tool_results_as_text_parts_read_as_their_text(server: LoopbackServer, endpoint: str) -> None:
    part = "text" if endpoint == "chat" else "input_text"
    plain = post(server, endpoint, {**history(endpoint, result="21C and sunny"), "seed": 0})
    parts = post(server, endpoint, {**history(endpoint, result=[{"type": part, "text": "21C"},
                                                                {"type": part, "text": " and sunny"}]), "seed": 0})
    assert plain.status_code == parts.status_code == 200, parts.text
    # The same prompt, hence the same answer (greedy-free sampling with one seed is deterministic too).
    assert prompt_tokens(endpoint, parts.json()) == prompt_tokens(endpoint, plain.json())
    assert [c[1:] for c in calls_of(endpoint, parts.json())] == [c[1:] for c in calls_of(endpoint, plain.json())]
    picture = ({"type": "image_url", "image_url": {"url": "x"}} if endpoint == "chat"
               else {"type": "input_image", "image_url": "x"})
    image = post(server, endpoint, history(endpoint, result=[picture]))
    assert image.status_code == 400


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_null_content_beside_calls(server: LoopbackServer, endpoint: str) -> None:
    """chat: ``content: null`` next to ``tool_calls`` reads as no text; responses: a function_call item
    with no message before it is the same assistant turn."""
    null = post(server, endpoint, {**history(endpoint, content=None), "seed": 1})
    assert null.status_code == 200, null.text
    if endpoint == "chat":
        empty = post(server, endpoint, {**history(endpoint, content=""), "seed": 1})
        assert prompt_tokens(endpoint, null.json()) == prompt_tokens(endpoint, empty.json())
    assert calls_of(endpoint, null.json())


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_result_for_no_call_is_a_400_naming_its_id(server: LoopbackServer, endpoint: str) -> None:
    r = post(server, endpoint, history(endpoint, answers=("call_1", "call_nowhere")))
    assert r.status_code == 400
    error = r.json()["error"]
    assert "call_nowhere" in error["message"] and error["type"] == "invalid_request_error"


def test_function_call_output_arrays(server: LoopbackServer) -> None:
    """Responses: an array of content parts is its text; an array of other objects is tool output, sent as
    JSON text (a 'type' field in it is the tool's data); a text part whose text is not a string is a 400."""
    data = [{"type": "restaurant", "name": "Northbound"}]
    r = post(server, "responses", {**history("responses", result=data), "seed": 0})
    assert r.status_code == 200, r.text
    bad = post(server, "responses", history("responses", result=[{"type": "input_text", "text": 5}]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
