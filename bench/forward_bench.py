"""The model's forward passes against what the machine can do: prefill and decode of the batched
transformers backend, beside the matmul and memory speeds they are bound by.

    python -m bench forward [--model models/stage2] [--context 1500] [--rows 1,8] [--steps 24]
                            [--repeats 3] [--json metrics/forward_bench.json]

- ``prefill``: one prompt of ``--context`` random token ids through ``prefill`` (the evaluation's
  path, prefix cache off), median of ``--repeats``: seconds, tokens/s, and the GFLOPS of its
  matmuls (2 x the non-embedding parameters a token);
- ``decode``: ``rows`` prompts of ``--context`` tokens admitted into one batch as the engine admits
  them, then ``--steps`` greedy steps of the whole batch: the median step (the first left out);
- ``sgemm_gflops``: torch's matmul alone on one of the model's shapes ([context x hidden] x
  [hidden x intermediate]); ``copy_gb_s``: ``Tensor.copy_`` of 256 MB (read + write).

Prefill near ``sgemm_gflops`` is compute-bound; a decode step near (weights + KV bytes) /
bandwidth is memory-bound: what is left then is fewer forward-pass tokens or another engine
(``docs/results.md``, ninth session). The load average and the CPU model are printed with them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.serve_peers import loadavg, machine_info


def _non_embedding_params(model: Any) -> int:
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = output.data_ptr() == embedding.data_ptr()
    return total - embedding.numel() - (0 if tied else output.numel())


def _random_ids(rng: random.Random, vocab: int, n: int) -> list[int]:
    """Ordinary tokens: clear of the vocabulary's first ids (bytes, specials) and its added ones at the end."""
    margin = min(1000, vocab // 4)
    return [rng.randrange(margin, vocab - margin) for _ in range(n)]


def bench_prefill(backend: Any, context: int, repeats: int, rng: random.Random) -> dict[str, Any]:
    vocab = len(backend.tokenizer)
    times = []
    for _ in range(repeats + 1):  # the first one warms up
        ids = _random_ids(rng, vocab, context)
        start = time.perf_counter()
        backend.prefill(ids)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    flops = 2 * _non_embedding_params(backend.model) * context
    return {"tokens": context, "seconds": round(seconds, 3), "tokens_per_s": round(context / seconds, 1),
            "matmul_gflops": round(flops / seconds / 1e9, 1)}


def bench_decode(backend: Any, context: int, rows: int, steps: int, rng: random.Random) -> dict[str, Any]:
    """``rows`` prompts admitted into one batch the way the engine admits them, then ``steps``
    greedy decode steps of the whole batch, each timed (the engine's own ``_step``)."""
    from serve.backends.base import GenerationState, SamplingParams
    from serve.backends.decode_row import DecodeRow
    from serve.backends.engine_thread import QueuedSequence

    vocab = len(backend.tokenizer)
    batch: list[Any] = []
    cache = mask = logits = None
    for _ in range(rows):
        ids = _random_ids(rng, vocab, context)
        row = DecodeRow(SamplingParams(max_tokens=steps + 1, temperature=0.0), None, threading.Event(),
                        GenerationState())
        batch, cache, mask, logits = backend._admit(batch, cache, mask, logits,
                                                    QueuedSequence(prompt_ids=ids, row=row, position=context))
    times = []
    for _ in range(steps):
        tokens = [int(t) for t in logits.argmax(-1)]
        start = time.perf_counter()
        logits, mask = backend._step(batch, cache, mask, tokens)
        times.append(time.perf_counter() - start)
    return {"rows": rows, "context": context, "steps_timed": len(times),
            "step_ms": round(1000 * statistics.median(times[1:] or times), 1)}


def bench_machine(hidden: int, intermediate: int, context: int) -> dict[str, Any]:
    import torch

    a, w = torch.randn(context, hidden), torch.randn(intermediate, hidden)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    start = time.perf_counter()
    for _ in range(20):
        torch.nn.functional.linear(a, w)
    gemm = (time.perf_counter() - start) / 20
    x = torch.empty(64 * 2**20)  # 256 MB of float32
    y = torch.empty_like(x)
    y.copy_(x)
    start = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    copy = (time.perf_counter() - start) / 5
    return {"sgemm_gflops": round(2 * context * hidden * intermediate / gemm / 1e9, 1),
            "copy_gb_s": round(2 * x.numel() * 4 / copy / 1e9, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="models/base", help="model folder (default: the embedded SmolLM2)")
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--rows", default="1,8", help="decode batch sizes")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default="metrics/forward_bench.json")
    args = parser.parse_args(argv)

    import torch

    from serve.backends.transformers_batched import BatchedTransformersBackend

    rows = [int(r) for r in args.rows.split(",") if r]
    backend = BatchedTransformersBackend(args.model, max_batch=max(rows), threads=args.threads or None)
    config = backend.model.config
    rng = random.Random(0)
    result: dict[str, Any] = {"machine": machine_info(), "loadavg_before": loadavg(), "model": args.model,
                              "dtype": str(next(backend.model.parameters()).dtype),
                              "threads": torch.get_num_threads(),
                              "non_embedding_params": _non_embedding_params(backend.model)}
    print(f"forward passes of {args.model}: {result['machine']}, load {result['loadavg_before']}, "
          f"{result['threads']} threads", flush=True)
    result["machine_speed"] = bench_machine(config.hidden_size, config.intermediate_size, args.context)
    print("machine:", json.dumps(result["machine_speed"]), flush=True)
    result["prefill"] = bench_prefill(backend, args.context, args.repeats, rng)
    print("prefill:", json.dumps(result["prefill"]), flush=True)
    result["decode"] = [bench_decode(backend, args.context, n, args.steps, rng) for n in rows]
    for entry in result["decode"]:
        print("decode:", json.dumps(entry), flush=True)
    result["loadavg_after"] = loadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
