"""Continuous batching in the transformers backend (`--max-batch`): same answers as one at a time.

The batched engine pads rows of different lengths into one KV cache, admits requests while others
run and drops rows as they finish; each of those is a place where a row could see another row's
tokens or the wrong positions. Greedy decoding makes that visible: any leak changes the tokens.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from loopback_server import LoopbackServer as Server

from serve.backends.base import GenerationState, SamplingParams
from serve.backends.transformers_backend import TransformersBackend
from serve.backends.transformers_batched import BatchedTransformersBackend

PROMPTS = ["Once upon a time", "The weather in Paris is", "a", "Write a list of three colors and then explain why "
           "each of them is used in flags of countries in Europe:", "Hello there", "x y z"]

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": n, "description": f"{n} tool", "parameters": WEATHER}}
         for n in ("get_weather", "get_weather_forecast")]


# Tiny models: intra-op threads only add contention on a busy 2-core machine (conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> BatchedTransformersBackend:
    return BatchedTransformersBackend(tiny_model_dir, max_batch=4)


def _ids(backend: BatchedTransformersBackend) -> list[list[int]]:
    return [backend.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def _sequential(backend: BatchedTransformersBackend, ids: list[int], max_tokens: int) -> tuple[list[int], str | None]:
    state = GenerationState()
    out = list(TransformersBackend.generate(backend, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                                            None, threading.Event(), state))
    return out, state.finish_reason


def _batched(backend: BatchedTransformersBackend, ids: list[int], max_tokens: int,
             cancel: threading.Event | None = None) -> tuple[list[int], str | None]:
    state = GenerationState()
    out = list(backend.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0), None,
                                cancel or threading.Event(), state))
    return out, state.finish_reason


def test_concurrent_greedy_equals_one_at_a_time(backend: BatchedTransformersBackend) -> None:
    prompts = _ids(backend)
    # Different lengths, so rows join and leave the batch at different steps, and more requests than slots.
    lengths = [40, 7, 25, 60, 3, 33]
    expected = [_sequential(backend, p, n) for p, n in zip(prompts, lengths, strict=True)]
    steps_before = backend.steps
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(lambda a: _batched(backend, *a), zip(prompts, lengths, strict=True)))
    assert got == expected
    assert [len(tokens) for tokens, _ in got] == lengths
    assert backend.max_rows_seen > 1, "requests were never batched together"
    # Batched: fewer forward passes than tokens produced (each step advanced several rows).
    assert backend.steps - steps_before < sum(lengths)


def test_cancelling_one_row_leaves_the_others_intact(backend: BatchedTransformersBackend) -> None:
    prompts = _ids(backend)
    expected = _sequential(backend, prompts[1], 50)
    cancel = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(_batched, backend, prompts[0], 10_000, cancel)
        other = pool.submit(_batched, backend, prompts[1], 50)
        assert other.result(timeout=60) == expected
        cancel.set()
        tokens, reason = long.result(timeout=60)
    assert reason == "cancelled" and 0 < len(tokens) < 10_000


def test_abandoned_consumer_frees_its_row(backend: BatchedTransformersBackend) -> None:
    prompts = _ids(backend)
    gen = backend.generate(prompts[0], SamplingParams(max_tokens=10_000, temperature=0.0), None, threading.Event(),
                           GenerationState())
    first = [next(gen) for _ in range(3)]
    gen.close()  # what the serving core does when a stop string matched
    assert len(first) == 3
    # The engine keeps serving: a fresh request completes with the same result as alone.
    assert _batched(backend, prompts[2], 12) == _sequential(backend, prompts[2], 12)


def test_batch_token_budget_bounds_padding(tiny_model_dir: Path) -> None:
    small = BatchedTransformersBackend(tiny_model_dir, max_batch=8, max_batch_tokens=64)
    prompts = _ids(small)
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: _batched(small, p, 30), [prompts[3], prompts[0], prompts[2]]))
    assert got == [_sequential(small, p, 30) for p in (prompts[3], prompts[0], prompts[2])]
    # 3 rows of >= 30 columns would exceed 64 padded positions: never more than 2 rows at once.
    assert small.max_rows_seen <= 2


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[tuple[Server, Server]]:
    common = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--default-max-tokens", "64",
              "--max-string-length", "12"]
    one, batched = Server(common), Server(common + ["--max-batch", "4"])
    yield one, batched
    one.stop()
    batched.stop()


def _ask(client: Any, i: int) -> tuple[Any, ...]:
    choice = ["auto", "required", {"type": "function", "function": {"name": "get_weather_forecast"}}, "none"][i % 4]
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"weather {i}"}], tools=TOOLS, tool_choice=choice,
        temperature=0.0, max_tokens=48, parallel_tool_calls=i % 2 == 0)
    c = resp.choices[0]
    calls = [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
    return c.finish_reason, c.message.content, calls


def test_server_with_batching_answers_like_the_sequential_server(servers: tuple[Server, Server]) -> None:
    one, batched = servers
    expected = [_ask(one.client(), i) for i in range(8)]
    client = batched.client()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: _ask(client, i), range(8)))
    assert got == expected
    calls = [call for _, _, cs in got for call in cs]
    assert calls, "the tiny model made no call at all: the grammar path was not exercised"
    for finish, _, answer_calls in got:
        for n, (_name, arguments) in enumerate(answer_calls):
            if finish == "length" and n == len(answer_calls) - 1:
                continue  # the output cap may cut the last call (returned as cut, never as valid)
            jsonschema.validate(json.loads(arguments), WEATHER)


def test_grouped_decode_attention_equals_repeated_heads() -> None:
    """The batched decode path attends each KV head once for its query group: same as repeat_kv."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import repeat_kv

    from serve.backends.attention import grouped_decode_sdpa

    torch.manual_seed(0)
    batch, kv_heads, groups, length, dim = 3, 2, 3, 17, 8
    query = torch.randn(batch, kv_heads * groups, 1, dim)
    key, value = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :5] = False  # left padding of different widths
    mask[2, ..., :11] = False
    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True)
    out, _ = grouped_decode_sdpa(module, query, key, value, mask, scaling=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask, scale=0.3).transpose(1, 2)
    assert out.shape == (batch, 1, kv_heads * groups, dim)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Padded positions carry no weight: changing them changes nothing.
    key2, value2 = key.clone(), value.clone()
    key2[0, :, :5] += 100.0
    value2[0, :, :5] -= 100.0
    torch.testing.assert_close(grouped_decode_sdpa(module, query, key2, value2, mask, scaling=0.3)[0], out)


def test_batched_backend_uses_the_grouped_decode_path(backend: BatchedTransformersBackend) -> None:
    # The tiny model has 4 query heads on 2 KV heads, so the equality tests above ran this path.
    assert backend.model.config.num_attention_heads > backend.model.config.num_key_value_heads
    assert backend.grouped_decode and backend.model.config._attn_implementation == "octupus_grouped_sdpa"
