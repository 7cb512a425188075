"""Large tool sets: what a request with 8, 128 or 512 tools costs the server before and while it decodes.

    python -m bench toolset [--sizes 8,128,512] [--vocab smollm2,qwen2.5] [--engines llguidance]
                            [--trials 3] [--json metrics/toolset_bench.json]

Tools are the synthetic function bank's (``stages/synthetic/function_bank.py``: enums, bounded
numbers, dates, defaults, optional parameters) followed by the environments' (nested objects and
arrays), renamed with a suffix once the 400-odd distinct ones run out. Per vocabulary (SmolLM2's with
the octupus tokens, the octupus format; Qwen2.5's, the hermes format), engine and size:

- ``prompt_tokens``: the request's prompt with the tools rendered by the format;
- ``first_ms``: a tool set never seen before: the server's grammar preparation (schema bounds, the
  grammar spec, compile) plus the first mask, median of ``--trials`` fresh sets;
- ``repeat_ms``: the same tool set again: must compile nothing (``compiled_again`` counts compiles
  seen on repeats; the cache is keyed by tools, tool_choice, format and response_format);
- ``overhead_ms`` = first - repeat, against the targets (100 ms at 128 tools, 500 ms at 512);
- ``mask_us_p50`` / ``p99``: per-token constraint time (mask + advance) while a call to the set's
  last tool is replayed token by token;
- ``rss_mb_per_grammar``: resident memory the process grows by per cached grammar of this size
  (five more fresh sets compiled and kept), which with the cache's 64 entries bounds its memory.

The load average and the CPU model are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.serve_bench import _pct, replay_seconds

log = logging.getLogger(__name__)

TARGET_MS = {128: 100.0, 512: 500.0}
CALL_ARGS = {"string": "Paris", "integer": 3, "number": 2.5, "boolean": True}


def tool_pool() -> list[dict[str, Any]]:
    """Every distinct tool: the function bank's, then the environments' (training and held out)."""
    from stages.synthetic.environments import environments
    from stages.synthetic.function_bank import build_bank, openai_tool

    tools = [openai_tool(fn) for fn in build_bank()]
    seen = {t["function"]["name"] for t in tools}
    for env in environments().values():
        for spec in env.functions():
            if spec.name not in seen:
                seen.add(spec.name)
                tools.append({"type": "function", "function": spec.function()})
    return tools


def tool_set(pool: list[dict[str, Any]], size: int, tag: str) -> list[dict[str, Any]]:
    """``size`` tools from the pool, every name suffixed with ``tag`` (a new set for every tag)."""
    out = []
    for i in range(size):
        fn = dict(pool[i % len(pool)]["function"])
        fn["name"] = f"{fn['name'][:40]}_{i // len(pool)}{tag}"
        out.append({"type": "function", "function": fn})
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class _Backend:
    """What the serving core reads of a backend when it prepares a request: no model is loaded."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.max_context = 1 << 20
        self.vocab_size = len(tokenizer)


class Bench:
    """One vocabulary, format and engine: the serving core's own request preparation, without a model."""

    def __init__(self, tokenizer: Any, fmt_name: str, engine_name: str) -> None:
        from serve.constraints import make_engine
        from serve.core import ServerConfig, ServingCore
        from serve.formats import make_format
        from serve.limits import SchemaLimits

        fmt = make_format(fmt_name, tokenizer)
        engine = make_engine(engine_name, tokenizer, len(tokenizer), fmt.stop_token_ids(), fmt.special_pieces())
        self.compiles = 0
        inner = engine._compile

        def counted(spec: Any) -> Any:
            self.compiles += 1
            return inner(spec)

        engine._compile = counted  # type: ignore[method-assign]
        self.core = ServingCore(_Backend(tokenizer), fmt, engine,
                                ServerConfig(model_name="bench", schema_limits=SchemaLimits(max_tools=1024)))

    def request(self, tools: list[dict[str, Any]]) -> tuple[float, Any, int]:
        """Prepare a request offering ``tools`` and compute its first mask: (ms, prepared, compiles)."""
        import torch

        from serve.inputs import GenerationInputs, ToolChoice

        inputs = GenerationInputs(model="bench", messages=[{"role": "user", "content": "Book it for Friday."}],
                                  tools=tools, tool_choice=ToolChoice("auto"))
        before = self.compiles
        start = time.perf_counter()
        prep = self.core._prepare(inputs)
        self.core.engine.matcher(prep.compiled).apply(torch.zeros(len(self.core.tokenizer)))
        return (time.perf_counter() - start) * 1e3, prep, self.compiles - before

    def replay(self, prep: Any, tools: list[dict[str, Any]]) -> list[float]:
        """Seconds per token (mask + advance) while a call to the last tool is replayed."""

        from serve.core import validate_call

        fn = tools[-1]["function"]
        arguments = json.dumps(example_arguments(fn.get("parameters") or {}))
        problem = validate_call(fn["name"], arguments, {fn["name"]: fn.get("parameters") or {"type": "object"}})
        if problem:
            raise RuntimeError(f"replayed call is invalid: {problem}")
        text = self.core.fmt.shape.render_call(fn["name"], arguments)
        return replay_seconds(self.core.engine.matcher(prep.compiled), self.core.tokenizer, text, self.core.engine.name)


def example_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments for the required parameters of ``schema`` (first enum value, or a plain value)."""
    args: dict[str, Any] = {}
    for name in schema.get("required", []):
        prop = schema["properties"][name]
        kind = prop.get("type", "string")
        kind = kind[0] if isinstance(kind, list) else kind
        if "enum" in prop:
            args[name] = prop["enum"][0]
        elif "default" in prop:
            args[name] = prop["default"]
        elif kind == "array":
            args[name] = []
        elif kind == "object":
            args[name] = example_arguments(prop)
        elif kind == "string":
            args[name] = "2026-12-06" if prop.get("format") == "date" else "Paris"
        elif kind in ("integer", "number"):
            low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
            args[name] = int(low) + 1 if kind == "integer" else float(low) + 0.5
        else:
            args[name] = True
    return args


def measure(bench: Bench, pool: list[dict[str, Any]], size: int, trials: int) -> dict[str, Any]:
    first, repeat, again, prompt = [], [], 0, 0
    for t in range(trials):
        tools = tool_set(pool, size, f"t{t}x{os.getpid()}")
        ms, prep, compiles = bench.request(tools)
        if compiles == 0:
            raise RuntimeError("a new tool set compiled nothing: the bench's sets are not new")
        first.append(ms)
        ms, _, compiles = bench.request(tools)
        repeat.append(ms)
        again += compiles
        prompt = len(prep.prompt_ids)
    samples = bench.replay(prep, tools)
    rss = _rss_mb()
    for k in range(5):
        bench.request(tool_set(pool, size, f"m{k}x{os.getpid()}"))
    per_grammar = (_rss_mb() - rss) / 5
    out = {"tools": size, "prompt_tokens": prompt, "first_ms": round(statistics.median(first), 1),
           "repeat_ms": round(statistics.median(repeat), 1), "compiled_again": again,
           "mask_us_p50": round(_pct(samples, 0.5) * 1e6, 1), "mask_us_p99": round(_pct(samples, 0.99) * 1e6, 1),
           "rss_mb_per_grammar": round(per_grammar, 2)}
    out["overhead_ms"] = round(out["first_ms"] - out["repeat_ms"], 1)
    if size in TARGET_MS:
        out["target_ms"] = TARGET_MS[size]
        out["meets_target"] = out["overhead_ms"] <= TARGET_MS[size]
    return out


def tokenizer_for(vocab: str) -> tuple[Any, str]:
    if vocab == "smollm2":
        from stages.edit_tokenizer import add_format_tokens
        from stages.hf_assets import load_smollm2_tokenizer

        tokenizer = load_smollm2_tokenizer()
        add_format_tokens(tokenizer)
        return tokenizer, "octupus"
    if vocab == "qwen2.5":
        from stages.hf_assets import build_qwen25_tokenizer

        return build_qwen25_tokenizer(), "hermes"
    raise SystemExit(f"unknown vocabulary {vocab!r} (smollm2 or qwen2.5)")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench toolset", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="8,128,512")
    p.add_argument("--vocab", default="smollm2,qwen2.5")
    p.add_argument("--engines", default="llguidance")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--json", default="metrics/toolset_bench.json", help="where to write the results ('' = nowhere)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    pool = tool_pool()
    results: dict[str, Any] = {"machine": machine(), "distinct_tools": len(pool), "runs": []}
    print(f"machine: {results['machine']}; {len(pool)} distinct tools in the pool")
    for vocab in [v for v in args.vocab.split(",") if v]:
        tokenizer, fmt_name = tokenizer_for(vocab)
        for engine in [e for e in args.engines.split(",") if e]:
            bench = Bench(tokenizer, fmt_name, engine)
            for size in [int(s) for s in args.sizes.split(",") if s]:
                row = {"vocab": vocab, "vocab_size": len(tokenizer), "format": fmt_name, "engine": engine,
                       **measure(bench, pool, size, args.trials)}
                results["runs"].append(row)
                target = f" (target {row['target_ms']:.0f} ms: {'met' if row['meets_target'] else 'MISSED'})" \
                    if "target_ms" in row else ""
                print(f"{vocab:8s} {fmt_name:8s} {engine:19s} {size:4d} tools  prompt {row['prompt_tokens']:6d} tok  "
                      f"first {row['first_ms']:8.1f} ms  repeat {row['repeat_ms']:7.1f} ms  overhead "
                      f"{row['overhead_ms']:8.1f} ms{target}  compiled again {row['compiled_again']}  mask p50/p99 "
                      f"{row['mask_us_p50']:.0f}/{row['mask_us_p99']:.0f} us  +{row['rss_mb_per_grammar']:.1f} MB "
                      "per cached grammar", flush=True)
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
