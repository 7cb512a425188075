"""The project's app served on 127.0.0.1 in a background thread, shared by the serve tests.

``OCTUPUS_TEST_BACKEND=vllm`` (set by ``make test-vllm``, which runs in ``.venv-vllm``) serves every
such test through the vLLM backend instead of transformers: the same tests, the other backend.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import openai

from serve.__main__ import build_core, build_parser
from serve.app import create_app
from serve.process import InProcessServer

TEST_BACKEND = os.environ.get("OCTUPUS_TEST_BACKEND", "transformers")
if TEST_BACKEND not in ("transformers", "vllm"):
    raise RuntimeError(f"OCTUPUS_TEST_BACKEND={TEST_BACKEND!r}: expected transformers or vllm")

# vLLM on CPU for tiny test models: float32 like the transformers backend (its CPU default would be
# bfloat16), a small KV cache (its default takes GiBs per server), no graph compilation (a minute per start).
VLLM_TEST_ARGS = ["--backend", "vllm", "--dtype", "float32", "--kv-cache-memory-bytes", str(64 * 1024 * 1024),
                  "--max-num-seqs", "16", "--enforce-eager"]


def backend_argv(argv: list[str]) -> list[str]:
    """ARGV with the test backend's options added, unless the test picked a backend itself."""
    if TEST_BACKEND == "vllm" and "--backend" not in argv:
        return [*argv, *VLLM_TEST_ARGS]
    return list(argv)


def save_hermes_model(tokenizer: Any, out: Any) -> Any:
    """A tiny random llama with a ChatML tokenizer (SmolLM2's), served in the hermes format; saved to ``out``."""
    from stages.hf_assets import build_tiny_model

    # vLLM's CPU attention needs heads at least 32 wide.
    heads = dict(hidden_size=64, num_heads=2, num_kv_heads=1) if TEST_BACKEND == "vllm" else dict(hidden_size=32)
    model = build_tiny_model(tokenizer, arch="llama", intermediate_size=64, **heads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class LoopbackServer:
    """`python -m serve` ARGV, served on a free loopback port; `core_hook` may wrap the built core."""

    def __init__(self, argv: list[str], core_hook: Callable[[Any], Any] | None = None) -> None:
        args = build_parser().parse_args(backend_argv(argv))

        def factory() -> Any:
            core = build_core(args)
            return core_hook(core) if core_hook else core

        self.app = create_app(factory)
        # vLLM starts an engine process and a worker process: much slower than loading a tiny model.
        self.server = InProcessServer(self.app, startup_timeout_s=300 if args.backend == "vllm" else 60)
        self.base = self.server.base_url

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.server.stop()
