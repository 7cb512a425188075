"""The backend interface: a tokenizer, a context size, and a token generator with an optional grammar."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from serve.constraints.base import ConstraintEngine, Matcher


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    # Stop when the last ``repetition_window`` tokens repeat a cycle of at most 32 tokens (0 = off).
    repetition_window: int = 0


@dataclass
class GenerationState:
    """Filled in by the backend while a generation runs; read by the caller once it ends."""

    finish_reason: str | None = None  # stop | length | cancelled | repetition
    completion_tokens: int = 0
    constraint_seconds: list[float] = field(default_factory=list)
    masks: int = 0  # tokens whose whole mask was computed (the others: the preferred token was allowed)
    error: str | None = None  # the grammar rejected a sampled token or left no token allowed


@dataclass
class EngineTime:
    """Where a backend's forward passes spent their time, for ``/metrics``.

    ``prefill`` covers the prompt's forward pass (after the prefix cache), ``decode`` every
    one-token step; what a request's latency holds beyond the two is queueing, the grammar, the
    template and HTTP. ``decode_rows`` sums the rows each step advanced, so
    ``decode_rows / decode_steps`` is the mean batch.
    """

    prefill_seconds: float = 0.0
    prefills: int = 0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0
    forced_tokens: int = 0  # grammar-forced tokens fed in the step of the row's sampled token (no step of their own)

    def add_prefill(self, seconds: float) -> None:
        self.prefill_seconds += seconds
        self.prefills += 1

    def add_step(self, seconds: float, rows: int = 1) -> None:
        self.decode_seconds += seconds
        self.decode_steps += 1
        self.decode_rows += rows


class Backend(ABC):
    name: str
    tokenizer: Any
    max_context: int
    vocab_size: int
    # Generations that may run at once; the core sizes its worker pool from it. A backend that
    # decodes one sequence at a time on the CPU (transformers) keeps 1 so requests queue in order;
    # one that batches (vLLM) needs them in flight together.
    max_concurrency: int = 1
    # Forward-pass time, where the backend measures it (the engines that run in this process).
    engine_time: EngineTime | None = None

    @abstractmethod
    def generate(self, prompt_ids: list[int], params: SamplingParams, matcher: Matcher | None,
                 cancel: threading.Event, state: GenerationState) -> Iterator[int]:
        """Yield generated token ids (stop tokens excluded); set ``state`` before returning."""

    def bare_generate(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """The library's own generation call, greedy, for benchmarking against ``generate``."""
        raise NotImplementedError

    def constraint_engine(self, engine: ConstraintEngine) -> ConstraintEngine:
        """The engine the core should use with this backend (vLLM wraps it to send grammars along)."""
        return engine

    def close(self) -> None:  # noqa: B027 (optional hook: nothing to release by default)
        """Release what the backend holds outside this process (vLLM's engine processes)."""

