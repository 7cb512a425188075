"""Prompt rendering and output parsing of the serving formats, and the conversation rules (no model needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve.conversation import normalize_messages
from serve.errors import BadRequest
from serve.formats import make_format
from toolcall.chat_template import render_chat
from toolcall.metadata import METADATA_FILE
from toolcall.parser import parse_turn
from toolcall.shapes import HERMES_SHAPE, OCTUPUS_SHAPE

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_auto_detects_format(tiny_tokenizer: Any, smollm2_tokenizer: Any) -> None:
    assert make_format("auto", tiny_tokenizer).name == "octupus"
    assert make_format("auto", smollm2_tokenizer).name == "hermes"


def test_hermes_injects_tools_and_history_when_template_cannot(smollm2_tokenizer: Any) -> None:
    fmt = make_format("hermes", smollm2_tokenizer)
    assert not fmt.template_renders_tools  # SmolLM2's template ignores tools
    messages = normalize_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])
    prompt = fmt.render(messages, TOOLS)
    assert prompt.startswith("<|im_start|>system\nBe brief.")
    assert json.dumps(TOOLS[0]["function"]) in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_octupus_renders_with_project_template(tiny_tokenizer: Any) -> None:
    fmt = make_format("octupus", tiny_tokenizer)
    prompt = fmt.render([{"role": "user", "content": "hi"}], TOOLS)
    assert prompt.startswith("<|SYSTEM|># Tools\nget_weather: ")
    assert prompt.endswith("<|USER|>hi" + tiny_tokenizer.eos_token + "<|ASSISTANT|>")


@pytest.mark.parametrize("tool_format", ["v1", "v2"])
def test_octupus_renders_the_way_the_model_was_trained(tiny_tokenizer: Any, tmp_path: Any, tool_format: str) -> None:
    """A model trained with V1's rendering (octupus.json beside it) is prompted with V1's rendering."""
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / METADATA_FILE).write_text(json.dumps({"format": "octupus", "tool_format": tool_format}))
    fmt = make_format("octupus", AutoTokenizer.from_pretrained(tmp_path))
    # V1 and V2 differ in how a turn's tool results are rendered (merged vs one message each).
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": f'{{"city": "{c}"}}'}}
             for i, c in enumerate(["Paris", "Oslo"])]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "c0", "content": "12C"},
                {"role": "tool", "tool_call_id": "c1", "content": "3C"}]
    prompt = fmt.render(messages, TOOLS)
    expected = {f: render_chat(messages, TOOLS, eos_token=tiny_tokenizer.eos_token, tool_format=f,
                               add_generation_prompt=True) for f in ("v1", "v2")}
    assert expected["v1"] != expected["v2"]
    assert prompt == expected[tool_format]
    (tmp_path / METADATA_FILE).write_text(json.dumps({"tool_format": "v3"}))
    with pytest.raises(ValueError, match="tool_format 'v3'"):
        make_format("octupus", AutoTokenizer.from_pretrained(tmp_path))


@pytest.mark.parametrize("shape", [OCTUPUS_SHAPE, HERMES_SHAPE], ids=["octupus", "hermes"])
def test_incremental_parse_never_retracts(shape: Any) -> None:
    calls = [("get", '{"city": "Rome", "n": [1, 2]}'), ("get_weather", '{"city": "}\\n</tool_call>"}')]
    text = shape.render_calls(calls)
    sent_args: dict[int, str] = {}
    for end in range(1, len(text) + 1):
        parsed = parse_turn(shape, text[:end], finished=False)
        assert parsed.content is None
        for i, call in enumerate(parsed.calls):
            if call.name is not None:
                assert call.name == calls[i][0]  # a name is only reported once whole
                assert call.arguments.startswith(sent_args.get(i, ""))
                assert calls[i][1].startswith(call.arguments)
                sent_args[i] = call.arguments
    final = parse_turn(shape, text, finished=True)
    assert [(c.name, c.arguments, c.complete) for c in final.calls] == [(n, a, True) for n, a in calls]
    # A call is complete once its arguments close, whether or not its end-of-call marker follows
    # (a max_tokens cut inside the marker); a cut inside the arguments leaves it incomplete.
    args_start = text.rindex(calls[-1][1])
    args_end = args_start + len(calls[-1][1])
    for end in range(args_start, len(text) + 1):
        last = parse_turn(shape, text[:end], finished=False).calls[-1]
        assert (last.arguments, last.complete) == ((calls[-1][1], True) if end >= args_end else
                                                   (last.arguments, False)), end


def test_text_is_held_while_it_could_still_become_a_call() -> None:
    assert parse_turn(HERMES_SHAPE, "<tool", finished=False).content is None
    assert parse_turn(HERMES_SHAPE, "<tool", finished=True).content == "<tool"
    assert parse_turn(HERMES_SHAPE, "Hi", finished=False).content == "Hi"


@pytest.mark.parametrize("messages, problem", [
    ([{"role": "assistant", "content": "hi"}], "at least one user message"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "x", "content": "r"}], "not a pending"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}], "unanswered"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "user", "content": "b"}], "no tool message"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "text only"),
])
def test_bad_message_order_is_rejected(messages: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(BadRequest, match=problem):
        normalize_messages(messages)
