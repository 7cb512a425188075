"""Serve a model behind an OpenAI-compatible API whose tool calls are always valid.

    python -m serve --model models/stage2 [--backend transformers|vllm|llamacpp]
        [--format auto|octupus|hermes|qwen3] [--engine llguidance|lm-format-enforcer] [--host 127.0.0.1]
        [--port 8000] [--api-key KEY] [--served-model-name NAME]

--backend llamacpp runs the forward passes in llama.cpp on GGUF weights (--gguf; see
serve/backends/llamacpp_backend.py). --backend vllm runs vLLM's V1 engine (GPU: `make setup-gpu`
installs it; CPU: scripts/vllm_venv.sh builds .venv-vllm) with --tensor-parallel-size,
--max-num-seqs, --gpu-memory-utilization, --kv-cache-memory-bytes and --enforce-eager; see
serve/backends/vllm_backend.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from serve.constraints import ENGINES
from serve.constraints.base import JsonLimits
from serve.limits import SchemaLimits

log = logging.getLogger("serve")

DEFAULT_ENGINE = "llguidance"


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model folder (saved transformers model, or one .gguf file)")
    p.add_argument("--backend", choices=["transformers", "vllm", "llamacpp"], default="transformers")
    p.add_argument("--gguf", default=None,
                   help="llamacpp backend: the GGUF weights (default: the one .gguf file in --model, whose "
                        "tokenizer and chat template render the prompts)")
    p.add_argument("--format", choices=["auto", "octupus", "hermes", "qwen3"], default="auto",
                   help="tool-call format; auto picks octupus when the tokenizer has its special tokens, qwen3 "
                        "(thinking, then hermes calls) when it has <think>, </think> and <tool_call>, else hermes")
    p.add_argument("--reasoning-budget", type=_non_negative, default=1024,
                   help="qwen3 format: most thinking tokens of a request with effort high or none given "
                        "(minimal 1/8, low 1/4, medium 1/2, xhigh 2x, max 4x; effort none or enable_thinking "
                        "false: no thinking); 0 turns thinking off for every request")
    p.add_argument("--engine", choices=list(ENGINES), default=DEFAULT_ENGINE, help="constraint engine")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("OCTUPUS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $OCTUPUS_API_KEY, else open)")
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="model id(s) clients send, e.g. a BFCL model name (default: the folder name)")
    p.add_argument("--default-max-tokens", type=int, default=1024,
                   help="output cap when a request sets none (BFCL sets none)")
    p.add_argument("--default-max-text-tokens", type=int, default=0,
                   help="when a request sets no max_tokens, end a text answer (no call can follow text) after "
                        "this many tokens; 0 = off")
    p.add_argument("--repetition-window", type=int, default=64,
                   help="stop when this many tokens repeat one short cycle (0 = off)")
    p.add_argument("--max-string-length", type=int, default=512,
                   help="maxLength given to string arguments whose schema sets none (0 = unbounded)")
    p.add_argument("--max-integer-digits", type=int, default=12,
                   help="digits allowed before the point in numbers whose schema sets no bounds (0 = unbounded)")
    p.add_argument("--max-whitespace", type=int, default=4,
                   help="whitespace characters allowed between JSON tokens of arguments")
    p.add_argument("--allow-extra-properties", action="store_true",
                   help="let objects listing their properties carry other keys (default: forbid unless the "
                        "schema sets additionalProperties)")
    p.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024,
                   help="larger request bodies are refused with 413 (0 = unlimited)")
    p.add_argument("--max-tools", type=int, default=128,
                   help="most tools one request may offer (OpenAI's limit is 128; agent clients with many MCP "
                        "servers send more: a 512-tool set compiles in well under a second, `python -m bench toolset`)")
    p.add_argument("--grammar-cache", type=_non_negative, default=64,
                   help="compiled grammars kept (least recently used dropped): a repeated tool set, tool_choice "
                        "and response_format compile nothing; a 512-tool grammar holds a few MB")
    p.add_argument("--max-schema-depth", type=int, default=64,
                   help="deepest nesting of JSON values in a tool's parameters schema (an object level takes two)")
    p.add_argument("--max-enum", type=int, default=1024, help="most values of one enum in a tool schema")
    p.add_argument("--dtype", default="auto", help="model dtype (auto: float32 on CPU)")
    p.add_argument("--max-context", type=int, default=None, help="override the model's context size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--max-batch", type=int, default=1,
                   help="transformers and llamacpp backends: requests decoded together (continuous batching; "
                        "llamacpp keeps a KV cache slot per request); 1 = one at a time")
    p.add_argument("--max-batch-tokens", type=int, default=32768,
                   help="transformers backend: most padded KV positions (rows x longest row) a batch may hold")
    p.add_argument("--prefix-cache-mb", type=float, default=512,
                   help="transformers and llamacpp backends: memory for the KV of recent prompts, reused when a "
                        "new prompt starts with one of them (multi-turn conversations, repeated tool lists); "
                        "0 = off (llamacpp still reuses what its slots hold)")
    p.add_argument("--fast-forward", type=_non_negative, default=None,
                   help="llamacpp backend: most tokens the grammar forces (a call's fixed keys and punctuation) "
                        "that a row feeds in one step beside its sampled token, instead of a step each "
                        "(default 32; 0 = off)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM backend: GPUs one model is split over")
    p.add_argument("--max-num-seqs", type=int, default=256,
                   help="vLLM backend: sequences batched at once (also the server's concurrent generations)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="vLLM backend: fraction of GPU memory for weights and KV cache")
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                   help="vLLM backend: KV cache size in bytes (on CPU it otherwise takes VLLM_CPU_KVCACHE_SPACE GiB)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="vLLM backend: skip graph compilation and capture (starts faster, decodes slower)")
    p.add_argument("--log-level", default=os.environ.get("OCTUPUS_LOG_LEVEL", "INFO"))
    return p


def build_core(args: argparse.Namespace) -> Any:
    from serve.constraints import make_engine
    from serve.core import ServerConfig, ServingCore
    from serve.formats import make_format

    backend: Any
    if args.backend == "vllm":
        from serve.backends.vllm_backend import VLLMBackend

        backend = VLLMBackend(args.model, engine=args.engine, dtype=args.dtype, max_context=args.max_context,
                              tensor_parallel_size=args.tensor_parallel_size, max_num_seqs=args.max_num_seqs,
                              gpu_memory_utilization=args.gpu_memory_utilization,
                              kv_cache_memory_bytes=args.kv_cache_memory_bytes, enforce_eager=args.enforce_eager)
    elif args.backend == "llamacpp":
        from serve.backends.llamacpp_backend import LlamaCppBackend

        backend = LlamaCppBackend(args.model, gguf=args.gguf, max_context=args.max_context, threads=args.threads,
                                  max_batch=args.max_batch, prefix_cache_mb=args.prefix_cache_mb,
                                  **({} if args.fast_forward is None else {"fast_forward": args.fast_forward}))
    elif args.max_batch > 1:
        from serve.backends.transformers_batched import BatchedTransformersBackend

        backend = BatchedTransformersBackend(args.model, dtype=args.dtype, max_context=args.max_context,
                                             threads=args.threads, max_batch=args.max_batch,
                                             max_batch_tokens=args.max_batch_tokens,
                                             prefix_cache_mb=args.prefix_cache_mb)
    else:
        from serve.backends.transformers_backend import TransformersBackend

        backend = TransformersBackend(args.model, dtype=args.dtype, max_context=args.max_context, threads=args.threads,
                                      prefix_cache_mb=args.prefix_cache_mb)
    fmt = make_format(args.format, backend.tokenizer)
    engine = make_engine(args.engine, backend.tokenizer, backend.vocab_size, fmt.stop_token_ids(),
                         special_tokens=fmt.special_pieces(), cache_size=args.grammar_cache)
    # vLLM applies grammars inside its engine: it needs them in a form it can send along.
    engine = backend.constraint_engine(engine) if hasattr(backend, "constraint_engine") else engine
    config = ServerConfig(
        model_name=(args.served_model_name or [Path(args.model).resolve().name])[0],
        aliases=tuple((args.served_model_name or [])[1:]),
        default_max_tokens=args.default_max_tokens, default_max_text_tokens=args.default_max_text_tokens,
        repetition_window=args.repetition_window,
        limits=JsonLimits(max_whitespace=args.max_whitespace, max_string_length=args.max_string_length,
                          max_integer_digits=args.max_integer_digits,
                          forbid_extra_properties=not args.allow_extra_properties),
        api_key=args.api_key or None, max_request_bytes=args.max_request_bytes,
        schema_limits=SchemaLimits(max_tools=args.max_tools, max_depth=args.max_schema_depth, max_enum=args.max_enum),
        reasoning_budget=args.reasoning_budget)
    log.info("config: model=%s backend=%s format=%s engine=%s limits=%s default_max_tokens=%d", args.model,
             args.backend, fmt.name, engine.name, config.limits, config.default_max_tokens)
    return ServingCore(backend, fmt, engine, config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(args.model).is_dir():
        print(f"error: --model {args.model} is not a folder (build it with `dvc repro`)", file=sys.stderr)
        return 2
    if args.backend == "vllm":
        from serve.backends.vllm_backend import VLLM_MISSING, vllm_available

        if not vllm_available():
            print(f"error: {VLLM_MISSING}", file=sys.stderr)
            return 2
    if args.backend == "llamacpp":
        from serve.backends.llamacpp_backend import LLAMACPP_MISSING, llamacpp_available

        if not llamacpp_available():
            print(f"error: {LLAMACPP_MISSING}", file=sys.stderr)
            return 2
    import uvicorn

    from serve.app import create_app

    app = create_app(lambda: build_core(args), freeze=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
