"""Grammar-forced tokens (fast-forward): what the matchers report as forced, and how a row takes them.

The llamacpp backend feeds these tokens beside a row's sampled token in one forward pass
(``tests/test_llamacpp_backend.py`` checks the answers against a run without it, with llama.cpp).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from serve.backends.base import GenerationState, SamplingParams
from serve.backends.decode_row import DecodeRow
from serve.constraints.base import GrammarSpec, Matcher, ReasoningGate, ToolGrammar
from serve.constraints.llguidance_engine import LLGuidanceEngine
from serve.formats import make_format

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}


def _required_call(tokenizer: Any) -> tuple[Any, Matcher]:
    fmt = make_format("hermes", tokenizer)
    engine = LLGuidanceEngine(tokenizer, len(tokenizer), fmt.stop_token_ids())
    spec = GrammarSpec(shape=fmt.shape, special_pieces=fmt.special_pieces(),
                       tools=(ToolGrammar("get_weather", json.dumps(WEATHER)),), allow_text=False, allow_calls=True,
                       parallel=False, max_whitespace=0)
    return engine, engine.matcher(engine.compile(spec))


def test_llguidance_forces_a_calls_fixed_text_and_nothing_inside_a_free_string(qwen_tokenizer: Any) -> None:
    tok = qwen_tokenizer
    _, m = _required_call(tok)
    forced = m.forced_tokens()
    text = tok.decode(forced)
    # The one tool under tool_choice required: everything up to the first key is fixed. The key's
    # closing quote is not given, since longer tokens could start with it.
    assert text.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"') and "city" in text
    assert forced == m.forced_tokens()  # asking consumes nothing
    for token in forced:
        assert m.consume(token)
    for token in tok.encode('":"Paris', add_special_tokens=False):  # no whitespace allowed in the arguments
        assert m.consume(token)
    assert m.forced_tokens() == []  # the city may go on: nothing is forced


def test_a_finished_or_failed_matcher_forces_nothing(qwen_tokenizer: Any) -> None:
    _, m = _required_call(qwen_tokenizer)
    bad = qwen_tokenizer.encode("Sunny", add_special_tokens=False)[0]
    assert not m.consume(bad)  # text where only a call may come
    assert m.forced_tokens() == []


class ScriptedMatcher(Matcher):
    """Allows any first token, then forces ``script`` one token at a time (then nothing); records what
    it consumed."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.consumed: list[int] = []

    def apply(self, logits: torch.Tensor) -> None:
        pass

    def consume(self, token_id: int) -> bool:
        self.consumed.append(token_id)
        if self.script and self.script[0] == token_id:
            self.script.pop(0)
        return token_id != 666

    def is_finished(self) -> bool:
        return False

    def is_accepting(self) -> bool:
        return True

    def forced_tokens(self) -> list[int]:
        return list(self.script) if self.consumed else []


def _row(matcher: Matcher, max_tokens: int = 100, stop: tuple[int, ...] = (2,)) -> tuple[DecodeRow, GenerationState]:
    state = GenerationState()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_token_ids=list(stop))
    return DecodeRow(params, matcher, threading.Event(), state), state


def _sample(row: DecodeRow, token: int) -> int | None:
    logits = torch.full((1000,), -5.0)
    logits[token] = 5.0
    return row.next_token(logits)


def test_a_row_takes_forced_tokens_as_if_sampled() -> None:
    m = ScriptedMatcher([11, 12, 13])
    row, state = _row(m)
    assert _sample(row, 10) == 10
    forced, ended = row.take_forced(32)
    assert forced == [11, 12, 13] and not ended
    assert row.generated == [10, 11, 12, 13] and m.consumed == [10, 11, 12, 13]
    assert state.completion_tokens == 4 and len(state.constraint_seconds) == 4  # one entry per token


def test_forced_tokens_stop_at_the_limit_and_at_max_tokens() -> None:
    row, _ = _row(ScriptedMatcher([11, 12, 13]))
    _sample(row, 10)
    assert row.take_forced(2) == ([11, 12], False)
    assert row.take_forced(0) == ([], False)
    row, state = _row(ScriptedMatcher([11, 12, 13]), max_tokens=3)
    _sample(row, 10)
    assert row.take_forced(32) == ([11, 12], True) and state.finish_reason == "length"
    assert row.generated == [10, 11, 12]


def test_a_forced_token_the_grammar_rejects_or_a_cancel_ends_the_row() -> None:
    row, state = _row(ScriptedMatcher([11, 666, 13]))
    _sample(row, 10)
    assert row.take_forced(32) == ([11], True) and state.finish_reason == "error"
    row, state = _row(ScriptedMatcher([11]))
    _sample(row, 10)
    row.cancel.set()
    assert row.take_forced(32) == ([], True) and state.finish_reason == "cancelled"


def test_no_forced_tokens_without_a_grammar_or_for_rows_sampled_elsewhere() -> None:
    row, _ = _row(None)  # type: ignore[arg-type]
    _sample(row, 10)
    assert row.take_forced(32) == ([], False)
    state = GenerationState()
    remote = DecodeRow(SamplingParams(max_tokens=10), ScriptedMatcher([5]), threading.Event(), state, sampler="vLLM")
    assert remote.take_forced(32) == ([], False)


def test_the_reasoning_gate_forces_its_markers_then_defers_to_the_answer() -> None:
    inner = ScriptedMatcher([40, 41])
    inner.consumed.append(0)  # past its free first token: the answer's grammar forces 40, 41
    gate = ReasoningGate(inner, open_ids=[7], close_id=8, separator_ids=[9], budget=4, banned=[])
    assert gate.forced_tokens() == [7]
    assert gate.consume(7)
    assert gate.forced_tokens() == []  # thinking: anything may come
    assert gate.consume(8)
    assert gate.forced_tokens() == [9]
    assert gate.consume(9)
    assert gate.forced_tokens() == [40, 41]


def test_a_greedy_row_takes_a_forced_token_without_a_mask() -> None:
    """At a forced position a greedy row takes the forced token even where the model prefers another
    (this matcher's apply masks nothing, so only the shortcut can give 11), and computes no mask."""
    row, state = _row(ScriptedMatcher([11]))
    assert _sample(row, 10) == 10  # the free first token (this matcher cannot answer allows: a mask)
    masks = state.masks
    assert _sample(row, 10) == 11 and state.masks == masks
