"""Property-based requests from the server's own OpenAPI schema (schemathesis), valid and invalid.

Whatever schemathesis sends, the server must not fail with a 5xx, and every error must be in
OpenAI's shape. It runs against the app on loopback with a tiny model, a few examples each; the
Responses endpoint a second time with every body streamed, whose events must each be one of the
openai SDK's event types, in OpenAI's order, ending in a response that did not fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import torch
from loopback_server import LoopbackServer
from responses_sse import check_sequence, sdk_event_types

from serve.app import create_app

MODEL = "tiny"
# Building the app does not build the serving core (that happens at start-up), so its schema is free.
schema = schemathesis.openapi.from_dict(create_app(lambda: None).openapi())
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                                max_examples=25, deterministic=True, database="none")


@pytest.fixture(scope="module", params=["octupus", "qwen3"])
def base_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The project's format, and a reasoning model's (thinking, effort and earlier reasoning take effect)."""
    model_dir = request.getfixturevalue("tiny_model_dir" if request.param == "octupus" else "qwen3_model_dir")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    srv = LoopbackServer(["--model", str(model_dir), "--served-model-name", MODEL, "--reasoning-budget", "2",
                          "--default-max-tokens", "4", "--max-request-bytes", str(256 * 1024)])
    yield srv.base
    srv.stop()
    torch.set_num_threads(before)


def keep_small(case: Any) -> None:
    if isinstance(case.body, dict):
        if isinstance(case.body.get("model"), str):
            # A random model name stops every request at the 404; this reaches templating and generation.
            case.body["model"] = MODEL
        # Keep generations short: the property is about input handling, not long outputs.
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            if isinstance(case.body.get(key), int) and case.body[key] > 4:
                case.body[key] = 4


def check_error_shape(response: Any) -> None:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)


@schema.parametrize()
def test_no_server_error_and_openai_error_shape(case: Any, base_url: str) -> None:
    keep_small(case)
    started = time.perf_counter()
    response = case.call(base_url=base_url, timeout=30)
    assert time.perf_counter() - started < 30
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if response.status_code >= 400:
        check_error_shape(response)


EVENT_TYPES = sdk_event_types()


@schema.include(path="/v1/responses", method="POST").parametrize()
def test_streamed_responses_body(case: Any, base_url: str) -> None:
    keep_small(case)
    if isinstance(case.body, dict):
        case.body["stream"] = True
    started = time.perf_counter()
    response = case.call(base_url=base_url, timeout=30)
    assert time.perf_counter() - started < 30
    assert response.status_code < 500, (case.body, response.text[:500])
    if response.status_code >= 400:
        check_error_shape(response)
        return
    assert response.headers["content-type"][0].startswith("text/event-stream")  # schemathesis: header lists
    events = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        EVENT_TYPES[event["type"]].model_validate(event)
        events.append(event)
    check_sequence(events)
    assert events[-1]["type"] != "response.failed", events[-1]
