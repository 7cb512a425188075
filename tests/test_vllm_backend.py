"""The vLLM backend's parts that need no vLLM: what a request sends to vLLM, the lm-format-enforcer
logits processor driven with fake batches, the token bridge against a fake engine, and the CLI's
refusal when vLLM is missing. The real engine runs in ``make test-vllm`` (tests/test_serve_e2e.py
with OCTUPUS_TEST_BACKEND=vllm).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import torch

from serve.backends.base import GenerationState, SamplingParams
from serve.backends.vllm_backend import VLLMBackend, request_options
from serve.backends.vllm_lmfe_processor import EXTRA_ARGS_KEY, LMFEToolCallLogitsProcessor
from serve.constraints import GrammarError, make_engine
from serve.constraints.base import GrammarSpec, ToolGrammar
from serve.constraints.llguidance_engine import build_lark
from serve.constraints.remote_grammar import RemoteGrammarEngine, RemoteMatcher, spec_from_payload, spec_to_payload
from serve.formats import make_format

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 4}}, "required": ["city"],
        "additionalProperties": False}


def spec_for(fmt: Any, allow_text: bool = False, parallel: bool = True) -> GrammarSpec:
    tools = (ToolGrammar("get", json.dumps(CITY)), ToolGrammar("get_weather", json.dumps(CITY)))
    return GrammarSpec(shape=fmt.shape, special_pieces=fmt.special_pieces(), tools=tools, allow_text=allow_text,
                       allow_calls=True, parallel=parallel, max_whitespace=2)


@pytest.fixture(scope="module")
def fmt(tiny_tokenizer: Any) -> Any:
    return make_format("octupus", tiny_tokenizer)


@pytest.fixture(scope="module")
def llg_engine(tiny_tokenizer: Any, fmt: Any) -> RemoteGrammarEngine:
    inner = make_engine("llguidance", tiny_tokenizer, len(tiny_tokenizer), fmt.stop_token_ids(),
                        special_tokens=fmt.special_pieces())
    return RemoteGrammarEngine(inner)


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ grammar routing and request mapping


def test_llguidance_route_sends_the_lark_grammar_and_replays_locally(llg_engine: RemoteGrammarEngine, fmt: Any,
                                                                     tiny_tokenizer: Any) -> None:
    spec = spec_for(fmt)
    compiled = llg_engine.compile(spec)
    assert llg_engine.compile(spec) is compiled  # cached per tool set like the wrapped engine
    assert compiled.lark == build_lark(spec) and "%json" in compiled.lark and "<|FUNCTION_CALL|>" in compiled.lark
    opts = request_options(SamplingParams(max_tokens=32, stop_token_ids=fmt.stop_token_ids()),
                           llg_engine.matcher(compiled))
    assert opts["structured_grammar"] == compiled.lark and "extra_args" not in opts

    good = llg_engine.matcher(compiled)
    valid = '<|FUNCTION_CALL|>get_weather<|PARAMETERS|>{"city": "Oslo"}'
    assert all(good.consume(t) for t in ids(tiny_tokenizer, valid))
    assert good.is_accepting()
    bad = llg_engine.matcher(compiled)
    verdicts = [bad.consume(t) for t in ids(tiny_tokenizer, '<|FUNCTION_CALL|>get<|PARAMETERS|>{"town": "Oslo"}')]
    assert not all(verdicts)  # the replay is what catches a token vLLM should never have sampled


def test_wrapped_engine_still_fails_closed(llg_engine: RemoteGrammarEngine, fmt: Any) -> None:
    unenforceable = ToolGrammar("uniq", json.dumps({"type": "object", "properties": {
        "a": {"type": "array", "uniqueItems": True}}}))
    with pytest.raises(GrammarError, match="llguidance"):
        llg_engine.compile(dataclasses.replace(spec_for(fmt), tools=(unenforceable,)))
    assert llg_engine.name == "llguidance" and llg_engine.enforces_number_bounds


def test_lmfe_route_sends_a_json_description_of_the_grammar(tiny_tokenizer: Any, fmt: Any) -> None:
    inner = make_engine("lm-format-enforcer", tiny_tokenizer, len(tiny_tokenizer), fmt.stop_token_ids(),
                        special_tokens=fmt.special_pieces())
    engine = RemoteGrammarEngine(inner)
    assert not engine.enforces_number_bounds  # so the core refuses min/max schemas, as without vLLM
    spec = spec_for(fmt, allow_text=True)
    matcher = engine.matcher(engine.compile(spec))
    assert isinstance(matcher, RemoteMatcher) and matcher.local is None
    opts = request_options(SamplingParams(max_tokens=8, stop_token_ids=[0]), matcher)
    assert "structured_grammar" not in opts
    payload = json.loads(json.dumps(opts["extra_args"]))[EXTRA_ARGS_KEY]  # crosses processes as plain data
    assert spec_from_payload(payload["spec"]) == spec
    assert payload["stop_token_ids"] == [0] and set(payload["special_tokens"]) == set(fmt.special_pieces())
    with pytest.raises(GrammarError, match="minimum"):
        engine.compile(dataclasses.replace(spec, tools=(ToolGrammar("n", json.dumps(
            {"type": "object", "properties": {"k": {"type": "integer", "minimum": 1}}})),)))


def test_sampling_values_map_to_what_vllm_accepts() -> None:
    opts = request_options(SamplingParams(max_tokens=5, temperature=1e-7, top_p=5e-324, seed=-(2 ** 63),
                                          stop_token_ids=[3, 4]), None)
    assert opts["temperature"] == 0.0  # greedy, as in the transformers backend
    assert 0 < opts["top_p"] <= 1
    assert 0 <= opts["seed"] < 2 ** 63
    assert opts["max_tokens"] == 5 and opts["stop_token_ids"] == [3, 4] and opts["n"] == 1
    assert opts["detokenize"] is False
    assert "structured_grammar" not in opts and "extra_args" not in opts
    same = request_options(SamplingParams(max_tokens=5, temperature=0.7, top_p=0.9, seed=7), None)
    assert (same["temperature"], same["top_p"], same["seed"]) == (0.7, 0.9, 7)


def test_payload_round_trip_keeps_every_field(fmt: Any) -> None:
    spec = spec_for(fmt, allow_text=True, parallel=False)
    assert spec_from_payload(json.loads(json.dumps(spec_to_payload(spec)))) == spec


# ------------------------------------------------------------------ the logits processor, fake batches


def test_lmfe_logits_processor_constrains_random_logits_to_a_valid_call(tiny_tokenizer: Any, fmt: Any,
                                                                         tmp_path: Path) -> None:
    """Driven as vLLM's AdapterLogitsProcessor drives it: a live output list and one logits row per step."""
    tiny_tokenizer.save_pretrained(tmp_path)
    vocab = len(tiny_tokenizer) + 20  # padded embedding rows, as real checkpoints have
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tmp_path), get_vocab_size=lambda: vocab))
    processor = LMFEToolCallLogitsProcessor(config, torch.device("cpu"), False)
    assert processor.is_argmax_invariant() is False
    assert processor.new_req_logits_processor(SimpleNamespace(extra_args=None)) is None
    assert processor.new_req_logits_processor(SimpleNamespace(extra_args={"other": 1})) is None

    stop = fmt.stop_token_ids()
    inner = make_engine("lm-format-enforcer", tiny_tokenizer, len(tiny_tokenizer), stop,
                        special_tokens=fmt.special_pieces())
    engine = RemoteGrammarEngine(inner)
    opts = request_options(SamplingParams(max_tokens=64, stop_token_ids=stop),
                           engine.matcher(engine.compile(spec_for(fmt, parallel=False))))
    finished = 0
    for seed in range(3):
        request = processor.new_req_logits_processor(SimpleNamespace(extra_args=opts["extra_args"]))
        generator = torch.Generator().manual_seed(seed)
        output: list[int] = []
        for _ in range(64):
            logits = request(output, torch.randn(vocab, generator=generator))
            token = int(torch.argmax(logits))
            output.append(token)
            if token in stop:
                break
        text = tiny_tokenizer.decode([t for t in output if t not in stop], skip_special_tokens=False)
        parsed = fmt.parse(text, output[-1] in stop)
        for call in parsed.complete_calls:
            assert call.name in ("get", "get_weather")
            jsonschema.validate(json.loads(call.arguments), CITY)
        finished += output[-1] in stop
        assert len(parsed.calls) <= 1  # parallel_tool_calls false, inside vLLM too
    assert finished, "no seed reached the end of a call within 64 tokens"


# ------------------------------------------------------------------ the token bridge, against a fake engine


def output(tokens: list[int], finished: bool = False, reason: str | None = None) -> Any:
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, finish_reason=reason, stop_reason=None)],
                           finished=finished)


class FakeAsyncLLM:
    """Streams scripted outputs as AsyncLLM.generate does; records aborts."""

    def __init__(self, script: list[Any], delay: float = 0.0) -> None:
        self.script, self.delay = script, delay
        self.aborted: list[str] = []
        self.requests: list[tuple[Any, Any]] = []

    async def generate(self, prompt: Any, sampling: Any, request_id: str) -> AsyncIterator[Any]:
        self.requests.append((prompt, sampling))
        for item in self.script:
            await asyncio.sleep(self.delay)
            yield item

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class FakeBackend(VLLMBackend):
    def __init__(self, engine: FakeAsyncLLM, eos: int = 0) -> None:  # no vLLM: skip the real start-up
        self.engine = engine
        self._eos_ids = {eos}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def _prompt(prompt_ids: list[int]) -> Any:
        return list(prompt_ids)

    def _sampling_params(self, params: SamplingParams, matcher: Any) -> Any:
        return request_options(params, matcher)


@pytest.fixture
def fake() -> Iterator[Any]:
    made: list[FakeBackend] = []

    def make(script: list[Any], delay: float = 0.0) -> FakeBackend:
        made.append(FakeBackend(FakeAsyncLLM(script, delay)))
        return made[-1]

    yield make
    for backend in made:
        backend.engine = None
        backend.close()


def run(backend: VLLMBackend, params: SamplingParams, matcher: Any = None,
        cancel: threading.Event | None = None) -> tuple[list[int], GenerationState]:
    state = GenerationState()
    return list(backend.generate([1, 2], params, matcher, cancel or threading.Event(), state)), state


def test_bridge_streams_tokens_and_stops_on_the_stop_token(fake: Any) -> None:
    backend = fake([output([5, 6]), output([7, 0], finished=True, reason="stop")])
    tokens, state = run(backend, SamplingParams(max_tokens=10, stop_token_ids=[0]))
    assert tokens == [5, 6, 7]  # the stop token is counted, never yielded
    assert (state.finish_reason, state.completion_tokens, state.error) == ("stop", 4, None)
    assert backend.engine.aborted == []  # vLLM finished on its own
    tokens, state = run(fake([output([5, 6, 7], finished=True, reason="length")]), SamplingParams(max_tokens=3))
    assert (tokens, state.finish_reason, state.completion_tokens) == ([5, 6, 7], "length", 3)


def test_bridge_replays_tokens_through_the_local_grammar(fake: Any, llg_engine: RemoteGrammarEngine, fmt: Any,
                                                          tiny_tokenizer: Any) -> None:
    matcher = llg_engine.matcher(llg_engine.compile(spec_for(fmt)))
    wrong = ids(tiny_tokenizer, '<|FUNCTION_CALL|>get<|PARAMETERS|>{"town"')
    backend = fake([output(wrong), output([0], finished=True, reason="stop")])
    tokens, state = run(backend, SamplingParams(max_tokens=40, stop_token_ids=[0]), matcher)
    assert state.finish_reason == "error" and "rejected token" in state.error
    assert len(tokens) < len(wrong)
    # Ending before the grammar is complete is caught too.
    matcher = llg_engine.matcher(llg_engine.compile(spec_for(fmt)))
    cut = ids(tiny_tokenizer, '<|FUNCTION_CALL|>get<|PARAMETERS|>{"city": "Os')
    tokens, state = run(fake([output(cut + [0], finished=True, reason="stop")]),
                        SamplingParams(max_tokens=40, stop_token_ids=[0]), matcher)
    assert state.finish_reason == "error" and "before the grammar was complete" in state.error


def test_bridge_cancel_and_repetition_abort_the_vllm_request(fake: Any) -> None:
    backend = fake([output([5])] * 200, delay=0.01)
    cancel = threading.Event()
    state = GenerationState()
    gen = backend.generate([1], SamplingParams(max_tokens=500), None, cancel, state)
    next(gen)
    cancel.set()
    rest = list(gen)
    assert state.finish_reason == "cancelled" and len(rest) <= 1
    deadline = time.time() + 5
    while not backend.engine.aborted and time.time() < deadline:
        time.sleep(0.01)
    assert len(backend.engine.aborted) == 1

    looping = fake([output([5, 6])] * 50)
    tokens, state = run(looping, SamplingParams(max_tokens=500, repetition_window=8))
    assert state.finish_reason == "repetition" and len(tokens) == 8
    deadline = time.time() + 5
    while not looping.engine.aborted and time.time() < deadline:
        time.sleep(0.01)
    assert looping.engine.aborted


def test_bridge_turns_an_engine_failure_into_a_generation_error(fake: Any) -> None:
    class Broken(FakeAsyncLLM):
        async def generate(self, prompt: Any, sampling: Any, request_id: str) -> AsyncIterator[Any]:
            yield output([5])
            raise ValueError("grammar refused")

    backend = fake([])
    backend.engine = Broken([])
    tokens, state = run(backend, SamplingParams(max_tokens=10))
    assert tokens == [5] and state.finish_reason == "error" and "grammar refused" in state.error


# ------------------------------------------------------------------ the CLI without vLLM


def test_backend_vllm_without_vllm_exits_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import serve.backends.vllm_backend as vb
    from serve.__main__ import main

    monkeypatch.setattr(vb, "vllm_available", lambda: False)
    assert main(["--model", str(tmp_path), "--backend", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "needs vLLM" in err and "scripts/vllm_venv.sh" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="needs vLLM"):
        VLLMBackend(tmp_path)
