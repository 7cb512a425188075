"""The serving core below HTTP: both endpoints feed it the same inputs, and its event stream ends cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serve.__main__ import build_core, build_parser
from serve.conversation import normalize_messages
from serve.events import assemble
from serve.inputs import GenerationInputs, ToolChoice
from serve.protocol import ChatCompletionRequest, ResponsesRequest
from serve.serving_chat import chat_inputs
from serve.serving_responses import responses_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_tool_choice_of_either_api() -> None:
    assert ToolChoice.of(None, has_tools=True) == ToolChoice("auto")
    assert ToolChoice.of(None, has_tools=False) == ToolChoice("none")
    assert ToolChoice.of("required", has_tools=True) == ToolChoice("required")
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "tool_choice": {"type": "function", "function": {"name": "f"}}})
    responses = ResponsesRequest.model_validate({"model": "m", "input": "x",
                                                 "tool_choice": {"type": "function", "name": "f"}})
    assert ToolChoice.of(chat.tool_choice, True) == ToolChoice.of(responses.tool_choice, True) == ToolChoice("named", "f")


def test_both_endpoints_build_the_same_inputs() -> None:
    """The same conversation sent to either endpoint reaches the core as the same inputs."""
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    chat = ChatCompletionRequest.model_validate({
        "model": "m", "temperature": 0.3, "top_p": 0.9, "seed": 5, "max_completion_tokens": 7,
        "parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": WEATHER}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": call}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"}]})
    responses = ResponsesRequest.model_validate({
        "model": "m", "temperature": 0.3, "top_p": 0.9, "seed": 5, "max_output_tokens": 7,
        "parallel_tool_calls": False, "tool_choice": {"type": "function", "name": "get_weather"},
        "tools": [{"type": "function", "name": "get_weather", "description": "d", "parameters": WEATHER}],
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "c1", **call},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"role": "user", "content": "And tomorrow?"}]})
    from_chat, from_responses = chat_inputs(chat), responses_inputs(responses)
    assert normalize_messages(from_chat.messages) == normalize_messages(from_responses.messages)
    assert dataclasses.replace(from_chat, messages=[]) == dataclasses.replace(from_responses, messages=[])
    assert from_chat.tool_choice == ToolChoice("named", "get_weather") and not from_chat.parallel_tool_calls


class LateExecutor(ThreadPoolExecutor):
    """Its futures complete a moment after their function returned, as they can on a busy machine."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def late() -> Any:
            result = fn(*args, **kwargs)
            time.sleep(0.3)
            return result

        return super().submit(late)


def test_a_stream_read_to_its_end_does_not_cancel_the_next_choice(tiny_model_dir: Path) -> None:
    """Choices of one request share the cancel event: only a consumer that leaves early may set it."""
    core = build_core(build_parser().parse_args(["--model", str(tiny_model_dir)]))
    core.executor.shutdown()
    core.executor = LateExecutor(max_workers=1)
    inputs = GenerationInputs(model=core.config.model_name, messages=[{"role": "user", "content": "Hello there"}],
                              tools=[], tool_choice=ToolChoice("none"), max_tokens=8, temperature=0.0)

    async def disconnected() -> bool:
        return False

    async def run() -> tuple[list[Any], list[Any], threading.Event]:
        prep = await core.prepare(inputs)
        cancel = threading.Event()
        streamed = []
        for index in range(2):
            streamed.append(assemble([ev async for ev in core.stream(prep, index, cancel)]))
        collected = [assemble(await core.collect(prep, index, disconnected)) for index in range(2)]
        return streamed, collected, cancel

    try:
        streamed, collected, cancel = asyncio.run(run())
    finally:
        core.executor.shutdown()
    assert not cancel.is_set()
    assert streamed == collected
    assert all(r.completion_tokens > 0 and r.finish_reason in ("stop", "length") for r in streamed)


def test_assemble_returns_a_cut_call_marked_incomplete() -> None:
    from serve.events import ArgsDelta, CallStart, Finished

    events = [CallStart(0, "call_a", "f"), ArgsDelta(0, '{"city": "Oslo"}'), CallStart(1, "call_b", "f"),
              ArgsDelta(1, '{"ci'), Finished(reason="length", completion_tokens=20, complete_calls=1)]
    result = assemble(events)
    assert [(c.id, c.arguments, c.complete) for c in result.calls] == [
        ("call_a", '{"city": "Oslo"}', True), ("call_b", '{"ci', False)]
    assert result.content is None and result.finish_reason == "length"


async def _answer(core: Any, request: GenerationInputs, stream: bool) -> Any:
    """One choice of REQUEST from CORE, streamed or collected, assembled into its result."""
    prep = await core.prepare(request)
    if stream:
        return assemble([ev async for ev in core.stream(prep, 0, threading.Event())])

    async def disconnected() -> bool:
        return False

    return assemble(await core.collect(prep, 0, disconnected))


def test_default_text_cap_ends_text_answers_only(tiny_model_dir: Path) -> None:
    """--default-max-text-tokens ends a text answer when the request sets no max_tokens; a call, or a
    request with its own max_tokens, is generated as without it."""
    capped = build_core(build_parser().parse_args(["--model", str(tiny_model_dir), "--default-max-tokens", "24",
                                                   "--default-max-text-tokens", "5"]))
    plain = build_core(build_parser().parse_args(["--model", str(tiny_model_dir), "--default-max-tokens", "24"]))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": WEATHER}}]

    def inputs(choice: str, max_tokens: int | None) -> GenerationInputs:
        return GenerationInputs(model=capped.config.model_name, messages=[{"role": "user", "content": "Hello there"}],
                                tools=tools, tool_choice=ToolChoice(choice), max_tokens=max_tokens, temperature=0.0)

    async def run() -> dict[str, Any]:
        return {
            "text": await _answer(plain, inputs("none", None), False),
            "text_capped": await _answer(capped, inputs("none", None), False),
            "text_capped_streamed": await _answer(capped, inputs("none", None), True),
            "text_own_cap": await _answer(capped, inputs("none", 24), False),
            "call": await _answer(plain, inputs("required", None), False),
            "call_capped": await _answer(capped, inputs("required", None), False),
        }

    try:
        got = asyncio.run(run())
    finally:
        capped.executor.shutdown()
        plain.executor.shutdown()
    assert got["text"].completion_tokens > 5, "the tiny model stopped early: the cap was not exercised"
    cut = got["text_capped"]
    assert cut.finish_reason == "length" and cut.completion_tokens == 5 and not cut.calls
    assert cut.content and got["text"].content.startswith(cut.content)
    assert got["text_capped_streamed"] == cut
    assert got["text_own_cap"] == got["text"]
    assert got["call"].calls and got["call"].completion_tokens > 5

    def without_ids(result: Any) -> Any:
        return dataclasses.replace(result, calls=[dataclasses.replace(c, id="") for c in result.calls])

    assert without_ids(got["call_capped"]) == without_ids(got["call"])


def test_a_stop_string_on_the_text_caps_token_wins(tiny_model_dir: Path) -> None:
    """A stop string completed by the very token that reaches the text cap ends the answer as a stop:
    finish "stop", the content cut before the stop string, in both the collected and streamed paths."""

    def core_capped_at(cap: int) -> Any:
        return build_core(build_parser().parse_args(["--model", str(tiny_model_dir), "--default-max-tokens", "24",
                                                     "--default-max-text-tokens", str(cap)]))

    def inputs(core: Any, stop: tuple[str, ...]) -> GenerationInputs:
        return GenerationInputs(model=core.config.model_name, messages=[{"role": "user", "content": "Hello there"}],
                                tools=[], tool_choice=ToolChoice("none"), max_tokens=None, temperature=0.0,
                                stop=stop)

    def run(cap: int, stop: tuple[str, ...], stream: bool = False) -> Any:
        core = core_capped_at(cap)
        try:
            return asyncio.run(_answer(core, inputs(core, stop), stream))
        finally:
            core.executor.shutdown()

    # The first cap whose last token adds text not seen before: that text becomes the stop string.
    before = run(1, ()).content
    for cap in range(2, 16):
        cap_only = run(cap, ())
        assert cap_only.finish_reason == "length", "the tiny model stopped early: the cap was not exercised"
        stop = cap_only.content[len(before):]
        if stop.strip() and cap_only.content.find(stop) == len(before):
            break
        before = cap_only.content
    else:
        pytest.fail("no token of the tiny model's answer brought new text")
    got = run(cap, (stop,))
    assert got.finish_reason == "stop" and got.content == before and not got.calls
    assert run(cap, (stop,), stream=True) == got
