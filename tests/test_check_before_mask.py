"""The preferred token checked before the mask (``serve.backends.decode_row.unmasked_choice``).

A row asks the grammar whether the token the model prefers is allowed and computes the whole mask
only when it is not. That is only right if the check never allows a token the mask forbids (greedy
answers would change): checked here on random walks through tool grammars on both vocabularies, and
end to end on a tiny model, greedy, with the check on and off.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from serve.backends import decode_row
from serve.backends.base import GenerationState, SamplingParams
from serve.backends.decode_row import DecodeRow, best_allowed, unmasked_choice
from serve.backends.transformers_backend import TransformersBackend
from serve.constraints.base import GrammarSpec, Matcher, ReasoningGate, ToolGrammar
from serve.constraints.llguidance_engine import SPARSE_TOKENS, LLGuidanceEngine
from serve.constraints.schema import JsonLimits, bound_schema
from serve.formats import make_format

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMAS = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"]},
    "convert_units": {"type": "object", "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "values": {"type": "array", "items": {"type": "number"}}, "exact": {"type": "boolean"}},
        "required": ["unit", "values"]},
}


def _spec(fmt: Any, names: list[str], *, text: bool, parallel: bool) -> GrammarSpec:
    limits = JsonLimits(max_whitespace=2, max_string_length=8)
    tools = tuple(ToolGrammar(n, json.dumps(bound_schema(SCHEMAS[n], limits))) for n in names)
    return GrammarSpec(shape=fmt.shape, special_pieces=fmt.special_pieces(), tools=tools, allow_text=text,
                       allow_calls=True, parallel=parallel, max_whitespace=limits.max_whitespace)


@pytest.mark.parametrize(("fixture", "format_name"), [
    ("qwen_tokenizer", "hermes"), ("smollm2_tokenizer", "hermes"),
    ("qwen_format_tokenizer", "octupus"), ("smollm2_format_tokenizer", "octupus"),
])
def test_the_check_never_allows_a_token_the_mask_forbids(request: pytest.FixtureRequest, fixture: str,
                                                         format_name: str) -> None:
    tok = request.getfixturevalue(fixture)
    fmt = make_format(format_name, tok)
    engine = LLGuidanceEngine(tok, len(tok), fmt.stop_token_ids())
    rng = random.Random(format_name + fixture)
    vocab = len(tok)
    stop = set(fmt.stop_token_ids())
    pieces = tok.get_vocab()
    allowed_by_check = walked = forced_seen = sparse_seen = refusing_seen = 0
    for names, text, parallel in [(["get_weather"], False, False), (["get_weather", "convert_units"], True, True),
                                  (["convert_units"], False, True), (["get_weather", "convert_units"], False, False)]:
        matcher = engine.matcher(engine.compile(_spec(fmt, names, text=text, parallel=parallel)))
        for _ in range(60):
            if matcher.is_finished():
                break
            # A greedy row asks for the few allowed tokens before the mask is written, a sampled row
            # writes it first: both orders, and both must agree with the mask.
            few_first = matcher.allowed_few() if walked % 2 else None
            logits = torch.zeros(vocab)
            matcher.apply(logits)
            allowed = torch.isfinite(logits).nonzero().flatten().tolist()
            few = matcher.allowed_few()
            assert few == (allowed if len(allowed) <= SPARSE_TOKENS else None), (few, allowed)
            assert few_first in (None, few) and (few_first is None) == (few is None or walked % 2 == 0)
            sparse_seen += few is not None and len(few) > 1
            # Random tokens, the allowed ones (which the check may call unsure), the stop tokens, ids
            # past the tokenizer, and other spellings of what few allowed tokens write (where text is
            # forced, the mask allows only the tokenizer's own spelling: ``call``, not ``cal``).
            spellings = [pieces[p[:k]] for t in allowed[:4] for p in [tok.convert_ids_to_tokens(t)]
                         for k in range(1, len(p)) if p[:k] in pieces]
            forced = matcher.forced_tokens()
            if forced:
                # Forced text: the mask allows its first token alone, which the check takes and the
                # next mask gives without walking the vocabulary.
                forced_seen += 1
                assert allowed == forced[:1] and matcher.allows(forced[0])
                again = torch.zeros(vocab)
                matcher.apply(again)
                assert torch.equal(again, logits)
            refuses = matcher.refuses_every_check()
            refusing_seen += refuses
            for token in (rng.sample(range(vocab), 150) + allowed[:60] + sorted(stop) + [vocab, vocab + 7]
                          + spellings):
                if matcher.allows(token):
                    allowed_by_check += 1
                    assert not refuses, (token, tok.decode([token]))
                    assert token < vocab and torch.isfinite(logits[token]), (token, tok.decode([token]))
            walked += 1
            # Walk on through tokens that are not the end of the turn, into and through the calls.
            token = rng.choice([t for t in allowed if t not in stop] or allowed)
            if token in stop:
                break
            assert matcher.consume(token)
    # The check said yes often and never wrongly, at forced text too.
    assert walked > 100 and allowed_by_check > 1000 and forced_seen > 5 and sparse_seen > 5 and refusing_seen > 5


def test_the_base_matcher_and_the_reasoning_gate_answer_what_they_can_tell() -> None:
    class Unsure(Matcher):
        def apply(self, logits: torch.Tensor) -> None: ...
        def consume(self, token_id: int) -> bool: return True
        def is_finished(self) -> bool: return False
        def is_accepting(self) -> bool: return False

    inner = Unsure()
    assert not inner.allows(5)  # an engine that cannot tell: mask first, always
    assert not inner.refuses_every_check()  # nor says that no check can pass
    gate = ReasoningGate(inner, open_ids=[10], close_id=11, separator_ids=[12], budget=2, banned=[0])
    assert gate.allows(10) and not gate.allows(5)  # the open marker is forced
    inner.refuses_every_check = lambda: True  # type: ignore[method-assign]
    assert not gate.refuses_every_check()  # the gate's own markers pass a check
    assert gate.allowed_few() == [10] and inner.allowed_few() is None
    gate.consume(10)
    assert gate.allows(5) and not gate.allows(0) and not gate.allows(10)  # thinking: anything but banned
    assert gate.allowed_few() is None
    gate.consume(5)
    gate.consume(6)
    assert not gate.allows(7) and gate.allows(11)  # the budget is spent: only the close marker
    assert gate.allowed_few() == [11]
    gate.consume(11)
    assert gate.allows(12) and not gate.allows(5)
    gate.consume(12)
    assert not gate.allows(5)  # the answer's matcher decides from here
    assert gate.refuses_every_check()


def test_unmasked_choice_only_where_it_is_exact() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0])
    gen = torch.Generator().manual_seed(0)
    assert unmasked_choice(logits, SamplingParams(max_tokens=1, temperature=0.0), gen) == 1
    assert unmasked_choice(logits, SamplingParams(max_tokens=1, temperature=0.8, top_p=1.0), gen) in {0, 1, 2}
    assert unmasked_choice(logits, SamplingParams(max_tokens=1, temperature=0.8, top_p=0.9), gen) is None


class CountingMatcher(Matcher):
    """Delegates to a real matcher and counts the masks computed."""

    def __init__(self, inner: Matcher) -> None:
        self.inner = inner
        self.masks = 0
        self.masked_here = False

    def _count(self) -> None:
        self.masks += not self.masked_here
        self.masked_here = True

    def apply(self, logits: torch.Tensor) -> None:
        self._count()
        self.inner.apply(logits)

    def allowed_few(self) -> list[int] | None:
        self._count()
        return self.inner.allowed_few()

    def consume(self, token_id: int) -> bool:
        self.masked_here = False
        return self.inner.consume(token_id)

    def allows(self, token_id: int) -> bool:
        return self.inner.allows(token_id)

    def refuses_every_check(self) -> bool:
        return self.inner.refuses_every_check()

    def forced_tokens(self) -> list[int]:
        return self.inner.forced_tokens()

    def is_finished(self) -> bool:
        return self.inner.is_finished()

    def is_accepting(self) -> bool:
        return self.inner.is_accepting()


def test_greedy_answers_are_the_same_with_and_without_the_check(tiny_model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TransformersBackend(tiny_model_dir)
    tok = backend.tokenizer
    fmt = make_format("octupus", tok)
    engine = LLGuidanceEngine(tok, backend.vocab_size, fmt.stop_token_ids())
    prompts = ["What is the weather in Paris?", "Convert 3 and 4 to fahrenheit", "Hello", "a b c d"]

    def run(check: bool, text: bool, prompt: str) -> tuple[list[int], int, str | None]:
        monkeypatch.setattr(decode_row, "CHECK_BEFORE_MASK", check)
        matcher = CountingMatcher(engine.matcher(engine.compile(
            _spec(fmt, ["get_weather", "convert_units"], text=text, parallel=True))))
        state = GenerationState()
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        out = list(backend.generate(ids, SamplingParams(max_tokens=40, temperature=0.0,
                                                        stop_token_ids=fmt.stop_token_ids()),
                                    matcher, threading.Event(), state))
        assert state.masks == matcher.masks <= len(state.constraint_seconds)  # one time entry per token
        return out, matcher.masks, state.error

    saved = 0
    for prompt in prompts:
        for text in (True, False):
            checked, masks_checked, error_checked = run(True, text, prompt)
            masked, masks_masked, error_masked = run(False, text, prompt)
            assert (checked, error_checked) == (masked, error_masked)
            assert masks_checked <= masks_masked
            saved += masks_masked - masks_checked
    assert saved > 0  # the check took the model's own token some of the time


def test_a_sampled_row_with_the_check_stays_inside_the_grammar() -> None:
    """Rejection sampling: a draw the grammar refuses is drawn again from the masked logits."""

    class OnlyEven(Matcher):
        def apply(self, logits: torch.Tensor) -> None:
            logits[1::2] = float("-inf")
        def consume(self, token_id: int) -> bool: return token_id % 2 == 0
        def allows(self, token_id: int) -> bool: return token_id % 2 == 0
        def is_finished(self) -> bool: return False
        def is_accepting(self) -> bool: return True

    params = SamplingParams(max_tokens=400, temperature=1.0, seed=3)
    row = DecodeRow(params, OnlyEven(), threading.Event(), GenerationState())
    taken = [row.next_token(torch.zeros(8)) for _ in range(400)]
    assert all(t is not None and t % 2 == 0 for t in taken)
    assert set(taken) == {0, 2, 4, 6}


class Allowing(Matcher):
    """Allows the tokens in ``ok``; records what it was asked."""

    def __init__(self, ok: set[int]) -> None:
        self.ok = ok
        self.asked: list[int] = []

    def apply(self, logits: torch.Tensor) -> None:
        for token in range(len(logits)):
            if token not in self.ok:
                logits[token] = float("-inf")
    def consume(self, token_id: int) -> bool: return token_id in self.ok
    def allows(self, token_id: int) -> bool:
        self.asked.append(token_id)
        return token_id in self.ok
    def is_finished(self) -> bool: return False
    def is_accepting(self) -> bool: return True


def test_the_best_allowed_token_is_the_masked_argmax_ties_to_the_lowest_id() -> None:
    logits = torch.tensor([1.0, 5.0, 3.0, 5.0, 3.0, 0.5, 3.0])
    before = logits.clone()
    m = Allowing({4, 6})
    # In order: 1 and 3 (5.0, lowest id first), then 2 (3.0, refused), then 4: the masked argmax.
    assert best_allowed(logits, 1, m, tries=4) == 4 and m.asked == [1, 3, 2, 4]
    assert torch.equal(logits, before)  # the hidden logits are put back
    masked = logits.clone()
    m.apply(masked)
    assert int(torch.argmax(masked)) == 4
    assert best_allowed(logits, 1, Allowing({4, 6}), tries=3) is None  # not among the 3 best: mask
    assert torch.equal(logits, before)
    assert best_allowed(torch.full((4,), float("-inf")), 0, Allowing(set()), tries=4) is None


def test_a_greedy_row_picks_among_a_few_allowed_tokens_without_writing_the_mask() -> None:
    """``allowed_few``: the best of the few by logit, the lowest id among equals, and ``apply`` never
    called; with none of them above -inf the mask decides (and reports that nothing is allowed)."""

    class Few(Matcher):
        def __init__(self, few: list[int]) -> None:
            self.few = few
        def apply(self, logits: torch.Tensor) -> None:
            keep = logits[self.few].clone()
            logits.fill_(float("-inf"))
            logits[self.few] = keep
        def allowed_few(self) -> list[int] | None: return self.few
        def consume(self, token_id: int) -> bool: return token_id in self.few
        def is_finished(self) -> bool: return False
        def is_accepting(self) -> bool: return True

    params = SamplingParams(max_tokens=4, temperature=0.0)
    logits = torch.tensor([9.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0])
    row = DecodeRow(params, Few([3, 5]), threading.Event(), GenerationState())
    before = logits.clone()
    assert row.next_token(logits) == 3 and torch.equal(logits, before)  # a tie: the lower id, no mask written
    state = GenerationState()
    row = DecodeRow(params, Few([1, 2]), threading.Event(), state)
    assert row.next_token(torch.tensor([9.0, float("-inf"), float("-inf")])) is None
    assert state.finish_reason == "error"
