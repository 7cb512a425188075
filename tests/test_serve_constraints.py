"""The request grammar on the real vocabularies: Qwen2.5's (production) and SmolLM2's (the embedded model).

Each case feeds a candidate output token by token: a token must be allowed by the mask before it
is consumed, and the output is accepted only if the grammar may end there (end-of-turn allowed).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch

from serve.constraints import GrammarError, GrammarSpec, JsonLimits, ToolGrammar, make_engine
from serve.constraints.schema import bound_schema, check_schema
from serve.errors import BadRequest
from serve.formats import make_format
from toolcall.shapes import HERMES_SHAPE, OCTUPUS_SHAPE

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
NAMES = ["get", "get_weather", "get_weather_forecast"]
LIMITS = JsonLimits(max_whitespace=2, max_string_length=16, max_integer_digits=6)


# Tiny models: intra-op threads only add contention on a busy 2-core machine (conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def spec(fmt: Any, names: list[str] = NAMES, schema: dict[str, Any] = WEATHER, *, text: bool = True,
         calls: bool = True, parallel: bool = True) -> GrammarSpec:
    bounded = json.dumps(bound_schema(schema, LIMITS))
    return GrammarSpec(shape=fmt.shape, special_pieces=fmt.special_pieces(),
                       tools=tuple(ToolGrammar(n, bounded) for n in names), allow_text=text, allow_calls=calls,
                       parallel=parallel, max_whitespace=LIMITS.max_whitespace)


class Checker:
    def __init__(self, tokenizer: Any, format_name: str) -> None:
        self.tokenizer = tokenizer
        self.fmt = make_format(format_name, tokenizer)
        self.stop = self.fmt.stop_token_ids()
        self.engine = make_engine("llguidance", tokenizer, len(tokenizer), self.stop)

    def accepts(self, grammar: GrammarSpec, text: str) -> bool:
        matcher = self.engine.matcher(self.engine.compile(grammar))
        vocab = len(self.tokenizer)
        for token in self.tokenizer(text, add_special_tokens=False)["input_ids"]:
            logits = torch.zeros(vocab)
            matcher.apply(logits)
            if not torch.isfinite(logits[token]):
                return False
            assert matcher.consume(token)
        logits = torch.zeros(vocab)
        matcher.apply(logits)
        return bool(torch.isfinite(logits[self.stop[0]])) and matcher.is_accepting()


@pytest.fixture(scope="module", params=["qwen", "smollm2"])
def octupus(request: pytest.FixtureRequest) -> Checker:
    fixture = {"qwen": "qwen_format_tokenizer", "smollm2": "smollm2_format_tokenizer"}[request.param]
    return Checker(request.getfixturevalue(fixture), "octupus")


@pytest.fixture(scope="module", params=["qwen", "smollm2"])
def hermes(request: pytest.FixtureRequest) -> Checker:
    fixture = {"qwen": "qwen_tokenizer", "smollm2": "smollm2_tokenizer"}[request.param]
    return Checker(request.getfixturevalue(fixture), "hermes")


def call(name: str, args: str) -> str:
    return OCTUPUS_SHAPE.render_call(name, args)


def test_octupus_decision_names_and_arguments(octupus: Checker) -> None:
    g = spec(octupus.fmt)
    assert octupus.accepts(g, "<|CONTENT|>Hello there, 你好!")
    for name in NAMES:  # names that are prefixes of one another all stay reachable
        assert octupus.accepts(g, call(name, '{"city": "Paris"}'))
    assert octupus.accepts(g, call("get", '{"city":"Rome","unit":"celsius"}') + call("get_weather", '{"city":"Oslo"}'))
    assert not octupus.accepts(g, call("get_w", '{"city": "Paris"}'))  # truncated name
    assert not octupus.accepts(g, call("post", '{"city": "Paris"}'))  # not offered
    assert not octupus.accepts(g, call("get", '{"city": "Paris", "zip": 1}'))  # extra property
    assert not octupus.accepts(g, call("get", '{"city": "Paris", "unit": "kelvin"}'))  # not in enum
    assert not octupus.accepts(g, call("get", "{}"))  # required property missing
    assert not octupus.accepts(g, call("get", '{"city": "' + "x" * 17 + '"}'))  # over the string cap
    assert not octupus.accepts(g, call("get", '{"city":     "Paris"}'))  # whitespace run over the cap
    assert not octupus.accepts(g, call("get", '{"city": "Paris"'))  # unfinished
    assert not octupus.accepts(g, "plain text without a decision token")


def test_properties_follow_the_clients_order(octupus: Checker) -> None:
    schema = {"type": "object", "properties": {"origin": {"type": "string"}, "date": {"type": "string"}},
              "required": ["origin", "date"]}
    g = spec(octupus.fmt, names=["fly"], schema=schema)
    assert octupus.accepts(g, call("fly", '{"origin": "CDG", "date": "2026-12-01"}'))


def test_octupus_tool_choice_variants(octupus: Checker) -> None:
    one = call("get", '{"city": "Paris"}')
    single = spec(octupus.fmt, parallel=False, text=True)
    assert octupus.accepts(single, one)
    assert not octupus.accepts(single, one + one)
    required = spec(octupus.fmt, text=False)
    assert not octupus.accepts(required, "<|CONTENT|>hi")
    assert octupus.accepts(required, one)
    named = spec(octupus.fmt, names=["get_weather"], text=False, parallel=False)
    assert octupus.accepts(named, call("get_weather", '{"city": "Paris"}'))
    assert not octupus.accepts(named, one)
    text_only = spec(octupus.fmt, names=[], calls=False)
    assert octupus.accepts(text_only, "<|CONTENT|>hi")
    assert not octupus.accepts(text_only, one)


def hcall(name: str, args: str) -> str:
    return HERMES_SHAPE.render_call(name, args)


def test_hermes_grammar(hermes: Checker) -> None:
    g = spec(hermes.fmt)
    assert hermes.accepts(g, "Sure, it is sunny.")
    for name in NAMES:
        assert hermes.accepts(g, hcall(name, '{"city": "Paris"}'))
    two = hcall("get", '{"city": "Rome"}') + "\n" + hcall("get_weather_forecast", '{"city": "Oslo"}')
    assert hermes.accepts(g, two)
    assert not hermes.accepts(spec(hermes.fmt, parallel=False), two)
    assert not hermes.accepts(g, hcall("get_weath", '{"city": "Paris"}'))
    assert not hermes.accepts(g, hcall("get", '{"town": "Paris"}'))
    assert not hermes.accepts(g, "<tool_call>\nnot json</tool_call>")  # text may not start like a call
    assert not hermes.accepts(spec(hermes.fmt, text=False), "Sure.")


def test_cache_and_fail_closed(octupus: Checker) -> None:
    g = spec(octupus.fmt)
    first = octupus.engine.compile(g)
    assert octupus.engine.compile(copy.deepcopy(g)) is first  # same tool set: no recompilation
    unique = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(GrammarError, match="uniqueItems"):
        octupus.engine.compile(spec(octupus.fmt, schema=unique))


def test_schema_checks_and_bounds() -> None:
    with pytest.raises(BadRequest, match="invalid JSON schema"):
        check_schema({"type": "object", "properties": {"a": {"type": "strng"}}}, "tools[0]")
    with pytest.raises(BadRequest, match="must describe an object"):
        check_schema({"type": "string"}, "tools[0]")
    assert check_schema(None, "tools[0]") == {"type": "object", "properties": {}}
    schema = {"type": "object", "properties": {
        "s": {"type": "string"}, "short": {"type": "string", "maxLength": 3}, "e": {"type": "string", "enum": ["a"]},
        "i": {"type": "integer", "minimum": 0}, "n": {"type": "number"},
        "o": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": True},
        "l": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "integer"}}}}}}
    b = bound_schema(schema, LIMITS)
    p = b["properties"]
    assert p["s"]["maxLength"] == 16 and p["short"]["maxLength"] == 3 and "maxLength" not in p["e"]
    assert p["i"] == {"type": "integer", "minimum": 0, "maximum": 999999}
    assert p["n"]["minimum"] == -999999
    assert b["additionalProperties"] is False and p["o"]["additionalProperties"] is True
    assert p["l"]["items"]["additionalProperties"] is False
    assert "maxLength" not in schema["properties"]["s"]  # the client's schema is untouched


@pytest.fixture(scope="module")
def lmfe(smollm2_format_tokenizer: Any) -> Checker:
    checker = Checker.__new__(Checker)
    checker.tokenizer = smollm2_format_tokenizer
    checker.fmt = make_format("octupus", smollm2_format_tokenizer)
    checker.stop = checker.fmt.stop_token_ids()
    checker.engine = make_engine("lm-format-enforcer", smollm2_format_tokenizer, len(smollm2_format_tokenizer),
                                 checker.stop, special_tokens=checker.fmt.special_pieces())
    return checker


def test_lm_format_enforcer_same_grammar(lmfe: Checker) -> None:
    g = spec(lmfe.fmt, schema={k: v for k, v in WEATHER.items()})
    for name in NAMES:
        assert lmfe.accepts(g, call(name, '{"city": "Paris"}'))
    two = call("get", '{"city":"Rome","unit":"celsius"}') + call("get_weather", '{"city":"Oslo"}')
    assert lmfe.accepts(g, two)
    assert not lmfe.accepts(spec(lmfe.fmt, parallel=False), two)
    assert not lmfe.accepts(g, call("get_w", '{"city": "Paris"}'))
    assert not lmfe.accepts(g, call("get", '{"city": "Paris", "unit": "kelvin"}'))
    assert not lmfe.accepts(g, call("get", '{"city": "Paris", "zip": 1}'))
    assert not lmfe.accepts(spec(lmfe.fmt, text=False), "<|CONTENT|>hi")
    # Keywords it would silently ignore are refused up front (fail closed).
    bounded = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}
    with pytest.raises(GrammarError, match="minimum"):
        lmfe.engine.compile(spec(lmfe.fmt, schema=bounded))


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.01, 0.06, 0.1, 0.5, 0.999, 1.0])
def test_llguidance_mask_writes_exactly_the_forbidden_tokens(density: float) -> None:
    """Every path of the mask (at most SPARSE_TOKENS allowed: read in Python; a few words in use: found
    with numpy; many allowed: written through the forbidden bits) against the plain reading of the
    bitmask, with a vocabulary that is no multiple of 32 and padded embedding rows past it."""
    import numpy as np

    from serve.constraints.llguidance_engine import _mask_in_place

    rng = np.random.default_rng(7)
    vocab, rows = 1000, 1024
    bits = rng.random(32 * ((vocab + 31) // 32)) < density
    words = np.packbits(bits, bitorder="little").view(np.int32).copy()
    logits = rng.standard_normal(rows).astype(np.float32)
    expected = np.where(np.r_[bits[:vocab], np.zeros(rows - vocab, bool)], logits, -np.inf).astype(np.float32)
    out = logits.copy()
    _mask_in_place(out, words, vocab)
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("allowed", [[], [0], [31], [31, 63, 151935], list(range(32, 96)), list(range(32, 97)),
                                     [151934, 151935, 151936, 151940], list(range(0, 151936, 2375))])
def test_sparse_ids_reads_the_set_bits_in_order(allowed: list[int]) -> None:
    """The allowed ids (the sign bit of a word included, ids past the vocabulary left out) when at most
    SPARSE_TOKENS bits are set, else None; on Qwen2.5's vocabulary size with padded bits past it."""
    import numpy as np

    from serve.constraints.llguidance_engine import SPARSE_TOKENS, sparse_ids

    vocab = 151936
    bits = np.zeros(32 * ((vocab + 31) // 32 + 1), dtype=bool)
    bits[allowed] = True
    words = np.packbits(bits, bitorder="little").view(np.int32).copy()
    ids = sparse_ids(words, vocab)
    if len(allowed) > SPARSE_TOKENS:
        assert ids is None
    else:
        assert ids == [token for token in sorted(allowed) if token < vocab]


@pytest.mark.parametrize("allowed", [[5], list(range(64)), list(range(4000, 4065)), list(range(4000, 4200, 3)),
                                     [49151, 49150, 7]])
def test_llguidance_mask_paths_on_a_large_vocabulary(allowed: list[int]) -> None:
    """A few allowed tokens on SmolLM2's vocabulary size: at the SPARSE_TOKENS limit (read in Python),
    just past it in a few words (numpy's sparse path), and the last ids with padded rows after them."""
    import numpy as np

    from serve.constraints.llguidance_engine import SPARSE_TOKENS, _mask_in_place

    vocab, rows = 49152, 49216
    assert SPARSE_TOKENS == 64
    bits = np.zeros(vocab, dtype=bool)
    bits[allowed] = True
    words = np.packbits(bits, bitorder="little").view(np.int32).copy()
    logits = np.random.default_rng(3).standard_normal(rows).astype(np.float32)
    out = logits.copy()
    _mask_in_place(out, words, vocab)
    expected = np.full(rows, -np.inf, dtype=np.float32)
    expected[allowed] = logits[allowed]
    assert np.array_equal(out, expected)
