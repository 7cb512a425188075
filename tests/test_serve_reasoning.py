"""Reasoning models with tools: the ``qwen3`` format (thinking, then the enforced answer).

A tiny random Qwen3 model on the real Qwen3 tokenizer (Qwen2.5's BPE rebuilt offline plus the
thinking tokens) and the family's template as this project writes it. Random weights are the harshest
client: whatever they think, the thinking stays within its budget, is returned apart from the
answer, and nothing in it is ever taken as a call; the answer after it is text or valid calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import torch
from loopback_server import TEST_BACKEND, scripted_output
from loopback_server import LoopbackServer as Server
from responses_sse import assembled, stream_events, without_ids

from serve.constraints.base import GrammarSpec, Matcher, ReasoningGate, ReasoningSpec, ToolGrammar
from serve.constraints.llguidance_engine import LLGuidanceEngine, build_lark
from serve.formats import Qwen3Format, detect_format, make_format
from serve.protocol import ResponsesRequest
from serve.serving_responses import input_to_messages
from toolcall.shapes import HERMES_SHAPE

MODEL = "tiny-qwen3"
BUDGET = 24
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}}]
USER = [{"role": "user", "content": "Weather in Paris?"}]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(qwen3_model_dir: Path) -> Iterator[Server]:
    srv = Server(["--model", str(qwen3_model_dir), "--served-model-name", MODEL, "--reasoning-budget", str(BUDGET),
                  "--max-string-length", "8", "--max-integer-digits", "4", "--default-max-tokens", "96"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


# ------------------------------------------------------------------ the family's template


def test_template_renders_the_qwen3_format(qwen3_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "I should look it up.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"c": 21}'},
    ]
    text = qwen3_tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\n")
    assert '\n<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        # After the last user message, the turn's thinking is shown again.
        "<|im_start|>assistant\n<think>\nI should look it up.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"c": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n")
    # A new user message drops the earlier thinking; the switch writes an empty thinking block.
    later = messages + [{"role": "assistant", "content": "21 degrees."}, {"role": "user", "content": "Thanks"}]
    text = qwen3_tokenizer.apply_chat_template(later, tools=TOOLS, tokenize=False, add_generation_prompt=True,
                                               enable_thinking=False)
    assert "I should look it up." not in text and "<|im_start|>assistant\n<tool_call>" in text
    assert text.endswith("<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_auto_detects_qwen3_and_renders_the_switch(qwen3_tokenizer: Any, qwen_tokenizer: Any) -> None:
    assert detect_format(qwen3_tokenizer) == "qwen3" and detect_format(qwen_tokenizer) == "hermes"
    fmt = make_format("auto", qwen3_tokenizer)
    assert isinstance(fmt, Qwen3Format) and {"<think>", "</think>", "<tool_call>"} <= fmt.special_pieces()
    assert fmt.render(USER, TOOLS, thinking=True).endswith("<|im_start|>assistant\n")
    assert fmt.render(USER, TOOLS, thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    with pytest.raises(ValueError, match="think"):
        Qwen3Format(qwen_tokenizer)


def test_a_template_without_the_switch_still_turns_thinking_off(qwen3_tokenizer: Any) -> None:
    """Thinking-only models' templates open the block themselves and know no switch."""
    import copy

    tok = copy.deepcopy(qwen3_tokenizer)
    tok.chat_template = qwen3_tokenizer.chat_template.replace(
        "{{- '<|im_start|>assistant\\n' -}}\n    {%- if enable_thinking",
        "{{- '<|im_start|>assistant\\n<think>\\n' -}}\n    {%- if false and enable_thinking")
    fmt = Qwen3Format(tok)
    on = fmt.render(USER, [], thinking=True)
    assert on.endswith("<|im_start|>assistant\n<think>\n") and fmt.opens_in_prompt(on)
    assert fmt.render(USER, [], thinking=False).endswith("<think>\n\n</think>\n\n")


# ------------------------------------------------------------------ the grammar


def _spec(budget: int = 4, open_: str = "<think>") -> GrammarSpec:
    return GrammarSpec(shape=HERMES_SHAPE, special_pieces=frozenset({"<think>", "</think>", "<tool_call>",
                                                                      "</tool_call>"}),
                       tools=(ToolGrammar("get_weather", json.dumps(WEATHER)),), allow_text=True, allow_calls=True,
                       parallel=True, max_whitespace=2,
                       reasoning=ReasoningSpec(open=open_, close="</think>", separator="\n\n", budget=budget))


def _allowed(matcher: Matcher, vocab: int) -> set[int]:
    logits = torch.zeros(vocab)
    matcher.apply(logits)
    return set(torch.nonzero(logits > float("-inf")).view(-1).tolist())


def test_llguidance_thinks_within_the_budget_then_answers(qwen3_tokenizer: Any) -> None:
    tok = qwen3_tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    engine = LLGuidanceEngine(tok, len(tok), [eos])
    think, close = tok.convert_tokens_to_ids(["<think>", "</think>"])
    m = engine.matcher(engine.compile(_spec()))
    assert _allowed(m, len(tok)) == {think}
    assert m.consume(think)
    for piece in ["\n", "hello", " there", " friend"]:  # four tokens: the budget
        allowed = _allowed(m, len(tok))
        assert close in allowed and eos not in allowed and think not in allowed
        (token,) = tok.encode(piece, add_special_tokens=False)
        assert m.consume(token)
    assert _allowed(m, len(tok)) == {close}  # the budget is spent: only the close marker
    assert m.consume(close) and not m.is_accepting()
    for token in tok.encode('\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                            add_special_tokens=False):
        assert m.consume(token), tok.decode([token])
    assert m.is_accepting()
    # The close marker spelled out in text is not thinking's to write: the real one is the token.
    m = engine.matcher(engine.compile(_spec(budget=50)))
    ids = tok.encode("<think>\nmaybe </think", add_special_tokens=False)
    assert all(m.consume(t) for t in ids)
    assert not m.consume(tok.encode(">", add_special_tokens=False)[0])
    lark = build_lark(_spec(open_=""))
    assert "think: reasoning </think>" in lark and "reasoning[max_tokens=4]" in lark


class _Free(Matcher):
    def apply(self, logits: torch.Tensor) -> None:
        logits[0] = float("-inf")

    def consume(self, token_id: int) -> bool:
        self.last = token_id
        return token_id != 0

    def is_finished(self) -> bool:
        return False

    def is_accepting(self) -> bool:
        return True


def test_reasoning_gate_for_engines_that_count_characters() -> None:
    gate = ReasoningGate(_Free(), open_ids=[5], close_id=6, separator_ids=[7], budget=2, banned=[9])
    assert _allowed(gate, 10) == {5} and not gate.consume(4) and gate.consume(5)
    assert _allowed(gate, 10) == set(range(10)) - {5, 9}  # thinking: anything but the stop and open tokens
    assert not gate.consume(9) and gate.consume(3) and gate.consume(3)
    assert _allowed(gate, 10) == {6} and not gate.is_accepting()  # budget spent
    assert gate.consume(6) and _allowed(gate, 10) == {7} and gate.consume(7)
    assert _allowed(gate, 10) == set(range(1, 10)) and gate.is_accepting()  # the answer's own matcher
    assert not gate.consume(0)


# ------------------------------------------------------------------ chat completions


def _check_calls(calls: Any) -> None:
    for call in calls or []:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_chat_returns_thinking_apart_and_valid_calls(client: openai.OpenAI) -> None:
    called = 0
    for seed in range(6):
        # Random weights rarely end a text answer (one token in 150k is the end of turn); a required
        # call ends once its arguments close, so half the requests ask for one.
        choice_mode = "required" if seed % 2 else "auto"
        resp = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=seed, temperature=1.0,
                                              tool_choice=choice_mode)
        choice = resp.choices[0]
        reasoning = choice.message.model_extra["reasoning_content"]
        assert isinstance(reasoning, str) and "</think>" not in reasoning and "<think>" not in reasoning
        used = resp.usage.completion_tokens_details.reasoning_tokens
        assert 2 <= used <= BUDGET + 2 and used <= resp.usage.completion_tokens  # the markers and the budget
        _check_calls(choice.message.tool_calls)
        if choice_mode == "required":
            assert not choice.message.content
        if choice.finish_reason == "tool_calls":
            called += 1
    assert called >= 2


def test_streamed_thinking_equals_the_plain_answer(server: Server, client: openai.OpenAI) -> None:
    for seed in range(3):
        body = {"model": MODEL, "messages": USER, "tools": TOOLS, "seed": seed, "temperature": 1.0}
        plain = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120).json()
        reasoning, content, calls = "", "", {}
        stream = client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            thought = (delta.model_extra or {}).get("reasoning_content") or ""
            assert not (thought and (content or calls)), "thinking streamed after the answer began"
            reasoning += thought
            content += delta.content or ""
            for c in delta.tool_calls or []:
                calls.setdefault(c.index, {"name": "", "arguments": ""})
                calls[c.index]["name"] += (c.function.name or "")
                calls[c.index]["arguments"] += (c.function.arguments or "")
        message = plain["choices"][0]["message"]
        assert reasoning == message["reasoning_content"]
        assert content == (message["content"] or "")
        assert [calls[i] for i in sorted(calls)] == [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in message["tool_calls"] or []]
        assert usage.completion_tokens_details.reasoning_tokens == plain["usage"]["completion_tokens_details"][
            "reasoning_tokens"]


def test_thinking_switches_and_effort(client: openai.OpenAI) -> None:
    off = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=1,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.choices[0].message.model_extra["reasoning_content"] is None
    assert off.usage.completion_tokens_details.reasoning_tokens == 0
    _check_calls(off.choices[0].message.tool_calls)
    none = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=1, reasoning_effort="none")
    assert none.choices[0].message.model_extra["reasoning_content"] is None
    assert none.choices[0].message.content == off.choices[0].message.content
    for seed in range(4):
        low = client.chat.completions.create(model=MODEL, messages=USER, seed=seed, reasoning_effort="low")
        assert low.usage.completion_tokens_details.reasoning_tokens <= BUDGET // 4 + 2


def test_max_tokens_inside_the_thinking_is_a_cut_answer(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=0, max_tokens=3)
    choice = resp.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls and not choice.message.content
    assert resp.usage.completion_tokens_details.reasoning_tokens == 3


@pytest.mark.skipif(TEST_BACKEND == "vllm", reason="a local matcher cannot steer vLLM's sampling")
def test_calls_written_inside_the_thinking_are_never_calls(qwen3_model_dir: Path) -> None:
    thought = ('Maybe <tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call> '
               'first.')
    srv = Server(["--model", str(qwen3_model_dir), "--served-model-name", MODEL],
                 core_hook=scripted_output(f"<think>\n{thought}\n</think>\n\nIt is sunny."))
    try:
        resp = srv.client().chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    finally:
        srv.stop()
    message = resp.choices[0].message
    assert message.tool_calls is None and message.content == "It is sunny."
    assert message.model_extra["reasoning_content"] == thought
    assert resp.choices[0].finish_reason == "stop"


def test_earlier_thinking_reaches_the_template(qwen3_tokenizer: Any) -> None:
    from serve.conversation import normalize_messages

    fmt = Qwen3Format(qwen3_tokenizer)
    chat = normalize_messages([*USER, {"role": "assistant", "content": None, "reasoning": "Look it up.",
                                       "tool_calls": [{"id": "c1", "type": "function", "function": {
                                           "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                               {"role": "tool", "tool_call_id": "c1", "content": "21"}])
    assert "<think>\nLook it up.\n</think>\n\n<tool_call>" in fmt.render(chat, TOOLS, thinking=True)
    req = ResponsesRequest(model=MODEL, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text",
                                                                        "text": "Look it up."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "21"}])
    assert normalize_messages(input_to_messages(req)) == chat
    bad = ResponsesRequest(model=MODEL, input=[{"type": "reasoning", "content": "text"}, *USER])
    with pytest.raises(Exception, match="reasoning item"):
        input_to_messages(bad)


# ------------------------------------------------------------------ responses


def test_responses_reasoning_item_and_its_events(server: Server, client: openai.OpenAI) -> None:
    for seed in range(3):
        body = {"model": MODEL, "input": "Weather in Paris?", "tools": [
            {"type": "function", "name": "get_weather", "parameters": WEATHER}], "seed": seed, "temperature": 1.0}
        plain = client.responses.create(**{k: v for k, v in body.items() if k != "seed"}, extra_body={"seed": seed})
        raw = httpx.post(server.base + "/v1/responses", json=body, timeout=120).json()
        first = plain.output[0]
        assert first.type == "reasoning" and first.content[0].type == "reasoning_text" and first.summary == []
        assert plain.usage.output_tokens_details.reasoning_tokens >= 2
        for item in plain.output[1:]:
            assert item.type in ("message", "function_call")
            if item.type == "function_call":
                jsonschema.validate(json.loads(item.arguments), WEATHER)
        events = stream_events(server.base, body)
        kinds = [e["type"] for e in events]
        assert kinds[2:5] == ["response.output_item.added", "response.content_part.added",
                              "response.reasoning_text.delta"]
        assert "response.reasoning_text.done" in kinds
        assert without_ids(assembled(events)) == without_ids(raw)
        assert [item["type"] for item in raw["output"]] == [item.type for item in plain.output]
    off = client.responses.create(model=MODEL, input="Weather in Paris?", reasoning={"effort": "none"})
    assert all(item.type != "reasoning" for item in off.output) and off.reasoning.effort == "none"


def test_lm_format_enforcer_keeps_the_budget_token_by_token(tiny_tokenizer: Any) -> None:
    """lm-format-enforcer follows characters: the thinking block is kept around its matcher."""
    import copy

    from tokenizers import AddedToken

    from serve.constraints import make_engine

    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    eos = tok.eos_token_id
    engine = make_engine("lm-format-enforcer", tok, len(tok), [eos], special_tokens=frozenset({"<think>", "</think>"}))
    spec = _spec(budget=2)
    spec = GrammarSpec(**{**spec.__dict__, "special_pieces": frozenset({"<think>", "</think>"})})
    m = engine.matcher(engine.compile(spec))
    assert isinstance(m, ReasoningGate)
    think, close = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert _allowed(m, len(tok)) == {think} and m.consume(think)
    assert eos not in _allowed(m, len(tok))
    assert m.consume(tok.encode("a", add_special_tokens=False)[0]) and m.consume(tok.encode("b", add_special_tokens=False)[0])
    assert _allowed(m, len(tok)) == {close} and m.consume(close)
    for token in tok.encode('\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
                            add_special_tokens=False):
        assert token in _allowed(m, len(tok)), tok.decode([token])
        assert m.consume(token)
    assert m.is_accepting()
