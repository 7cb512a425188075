"""Prompt-prefix KV reuse (`--prefix-cache-mb`): same tokens as a full prefill, bounded memory.

A reused prefix that was wrong in any way (off by one position, another prompt's keys, a cache
that kept growing into the stored copy) changes greedy tokens on a random model, so the tests
compare whole generations with the cache on and off.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from serve.backends.base import GenerationState, SamplingParams
from serve.backends.kv_cache import GrowingLayer
from serve.backends.prefix_cache import PrefixCache, common_prefix
from serve.backends.transformers_backend import TransformersBackend
from serve.backends.transformers_batched import BatchedTransformersBackend

# Tiny models: intra-op threads only add contention on a busy 2-core machine (conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def _one_row_cache(length: int, layers: int = 2, fill: float = 0.0):
    """A cache holding `length` positions whose values identify them (position + fill)."""
    cache = DynamicCache()
    cache.layers = [GrowingLayer() for _ in range(layers)]
    positions = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1) + fill
    for i in range(layers):
        cache.update(positions.expand(1, 2, length, 4).clone(), -positions.expand(1, 2, length, 4).clone(), i)
    return cache


def test_common_prefix() -> None:
    import numpy as np

    a = np.array([1, 2, 3, 4])
    assert common_prefix(a, np.array([1, 2, 3, 4, 5])) == 4
    assert common_prefix(a, np.array([1, 2, 9])) == 2
    assert common_prefix(a, np.array([7])) == 0
    assert common_prefix(a, np.array([], dtype=np.int64)) == 0


def test_lookup_takes_the_longest_prefix_and_leaves_one_token_to_prefill() -> None:
    cache = PrefixCache(max_bytes=10**9, min_tokens=4)
    short, long = list(range(10)), list(range(10)) + [50, 51, 52, 53]
    cache.store(short, _one_row_cache(10))
    cache.store([99] * 12, _one_row_cache(12, fill=1000.0))
    cache.store(long, _one_row_cache(14))
    # `long` extends `short`, so `short` was dropped as redundant.
    assert len(cache) == 2
    length, keys, values = cache.lookup(long + [60, 61])
    assert length == 14
    assert keys[0].shape == (1, 2, 14, 4) and torch.equal(keys[0][0, 0, :, 0], torch.arange(14.0))
    assert torch.equal(values[1][0, 1, :, 0], -torch.arange(14.0))
    # The same prompt again: everything but its last token comes from the cache.
    assert cache.lookup(long)[0] == 13
    # Diverging after 7 tokens: 7 reused.
    assert cache.lookup(list(range(7)) + [77, 78, 79])[0] == 7
    # Below min_tokens: nothing reused.
    assert cache.lookup([0, 1, 2, 88, 89])[0] == 0
    assert cache.lookups == 4 and cache.hits == 3
    assert cache.reused_tokens == 14 + 13 + 7
    assert cache.prefilled_tokens == (16 - 14) + (14 - 13) + (10 - 7) + 5


def test_budget_evicts_least_recently_used() -> None:
    one = _one_row_cache(8)
    entry_bytes = 2 * 2 * (1 * 2 * 8 * 4) * 4  # layers x (keys, values) x elements x float32
    cache = PrefixCache(max_bytes=2 * entry_bytes, min_tokens=4)
    a, b, c = [1] * 8, [2] * 8, [3] * 8
    cache.store(a, one)
    cache.store(b, one)
    assert cache.lookup(a + [0])[0] == 8  # a is now the most recently used
    cache.store(c, one)
    assert cache.nbytes == 2 * entry_bytes and len(cache) == 2
    assert cache.lookup(b + [0])[0] == 0  # b was evicted
    assert cache.lookup(a + [0])[0] == 8 and cache.lookup(c + [0])[0] == 8
    # An entry larger than the whole budget is not kept; a disabled cache keeps nothing.
    tiny = PrefixCache(max_bytes=entry_bytes - 1, min_tokens=4)
    tiny.store(a, one)
    assert len(tiny) == 0
    off = PrefixCache(max_bytes=0)
    off.store(a, one)
    assert len(off) == 0 and off.lookup(a + [0])[0] == 0 and off.prefilled_tokens == 9


def _conversation(backend: TransformersBackend) -> list[list[int]]:
    """Three prompts, each the previous one plus more: the steps of a multi-turn conversation."""
    tok = backend.tokenizer
    first = tok("You are a helpful assistant with tools to get the weather and to book flights and hotels "
                "in any city of the world. The user asks: what is the weather in Paris today and tomorrow?",
                add_special_tokens=False)["input_ids"]
    second = first + tok(" It is sunny. Now book me a flight from Paris to Rome for Friday.",
                         add_special_tokens=False)["input_ids"]
    third = second + tok(" Booked. And a hotel in Rome for two nights please.", add_special_tokens=False)["input_ids"]
    assert len(first) > 40
    return [first, second, third]


def _greedy(backend: TransformersBackend, ids: list[int], generate=None) -> list[int]:
    state = GenerationState()
    run = generate or backend.generate
    return list(run(ids, SamplingParams(max_tokens=12, temperature=0.0), None, threading.Event(), state))


def test_reused_prefix_gives_the_same_logits_and_tokens(tiny_model_dir: Path) -> None:
    plain = TransformersBackend(tiny_model_dir)
    cached = TransformersBackend.from_model(plain.model, plain.tokenizer, prefix_cache_mb=64)
    prompts = _conversation(plain)
    for ids in prompts:
        _, full = plain.prefill(ids)
        _, reused = cached.prefill(ids)
        torch.testing.assert_close(reused, full, rtol=1e-4, atol=1e-4)
    # The second and third prompts reused the one before them.
    assert cached.prefix_cache.hits == 2
    assert cached.prefix_cache.reused_tokens == len(prompts[0]) + len(prompts[1])
    assert plain.prefix_cache.hits == 0
    for ids in prompts:
        assert _greedy(cached, ids) == _greedy(plain, ids)
    assert cached.prefix_cache.hits == 5


def test_batched_engine_with_prefix_cache_matches_one_at_a_time(tiny_model_dir: Path) -> None:
    plain = TransformersBackend(tiny_model_dir)
    batched = BatchedTransformersBackend.from_model(plain.model, plain.tokenizer, max_batch=4, prefix_cache_mb=64)
    prompts = _conversation(plain)
    expected = [_greedy(plain, ids) for ids in prompts]
    # One conversation step after another (each reuses the step before), then all at once.
    assert [_greedy(batched, ids) for ids in prompts] == expected
    assert batched.prefix_cache.hits == 2
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _greedy(batched, prompts[i])))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(3)] == expected
    assert batched.prefix_cache.hits == 5


def test_server_exports_prefix_cache_counters(tiny_model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from serve.__main__ import build_core, build_parser
    from serve.app import create_app

    args = build_parser().parse_args(["--model", str(tiny_model_dir), "--prefix-cache-mb", "32"])
    app = create_app(lambda: build_core(args))
    long_text = "Tell me everything about the weather in Paris and in Rome and in Berlin and in Madrid " * 3
    with TestClient(app) as client:
        for suffix in ("", " and Lisbon too"):
            body = {"model": tiny_model_dir.name, "max_tokens": 2, "temperature": 0,
                    "messages": [{"role": "user", "content": long_text + suffix}]}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        metrics = client.get("/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith(("octupus_prefix_cache", "octupus_prefilled", "octupus_engine",
                                  "octupus_completion_tokens_total", "octupus_finish_reasons_total"))}
    # Forward-pass time: one prefill per request, and (ended by length at 2 tokens, or by a stop
    # token after 0-1) one decode step fewer than the tokens each request generated, one row each.
    assert values["octupus_engine_prefills_total"] == 2
    assert values["octupus_engine_prefill_seconds_total"] > 0
    by_length = values.get('octupus_finish_reasons_total{reason="length"}', 0)
    steps = values["octupus_engine_decode_steps_total"]
    assert steps == values["octupus_completion_tokens_total"] - by_length
    assert values["octupus_engine_decode_rows_total"] == steps
    assert (values["octupus_engine_decode_seconds_total"] > 0) == (steps > 0)
    assert values["octupus_prefix_cache_lookups_total"] == 2
    assert values["octupus_prefix_cache_hits_total"] == 1
    assert values["octupus_prefix_cache_reused_tokens_total"] > 40
    assert values["octupus_prefix_cache_bytes"] > 0
