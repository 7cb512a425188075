"""The project's app served on 127.0.0.1 in a background thread, shared by the serve tests.

``OCTUPUS_TEST_BACKEND=vllm`` (set by ``make test-vllm``, which runs in ``.venv-vllm``) serves every
such test through the vLLM backend instead of transformers: the same tests, the other backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

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


def is_cut(arguments: str) -> bool:
    """Arguments cut by max_tokens: the object never closed, so they are not JSON."""
    try:
        json.loads(arguments)
    except ValueError:
        return True
    return False


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


def scripted_output(text: str) -> Callable[[Any], Any]:
    """A core hook whose engine forces ``text`` token by token, then the end of turn: a faulty
    constraint engine, for the tests of what the core does when one lets a bad call through."""
    import torch

    from serve.constraints.base import Matcher

    class Scripted(Matcher):
        def __init__(self, script: list[int], eos: int) -> None:
            self.script, self.eos, self.pos = script, eos, 0

        def apply(self, logits: torch.Tensor) -> None:
            keep = self.script[self.pos] if self.pos < len(self.script) else self.eos
            value = logits[keep].clone()
            logits.fill_(float("-inf"))
            logits[keep] = value

        def consume(self, token_id: int) -> bool:
            self.pos += 1
            return True

        def is_finished(self) -> bool:
            return self.pos >= len(self.script)

        def is_accepting(self) -> bool:
            return self.is_finished()

    def hook(core: Any) -> Any:
        script = core.tokenizer(text, add_special_tokens=False)["input_ids"]
        core.engine.matcher = lambda compiled: Scripted(script, core.tokenizer.eos_token_id)
        return core

    return hook


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
