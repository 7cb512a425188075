"""The constraint-engine interface every backend uses, and the engine-neutral grammar request.

A request's grammar is fully described by :class:`GrammarSpec`: the output shape of the format,
the tools that may be called (with schemas already normalised by :mod:`serve.constraints.schema`),
whether text and/or calls are allowed, whether more than one call may follow, and whether text must
be JSON valid against a schema (``response_format``). An engine
compiles a spec once (cached by its key) and hands out a fresh :class:`Matcher` per sequence.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from serve.errors import BadRequest
from toolcall.shapes import ToolCallShape


class GrammarError(BadRequest):
    """The request's schemas or grammar cannot be enforced by the engine (fail closed: 400)."""

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message, param=param, code="unenforceable_schema")


@dataclass(frozen=True)
class JsonLimits:
    """Bounds that let weak models finish a call: see ``serve.constraints.schema``."""

    max_whitespace: int = 4
    max_string_length: int = 512
    max_integer_digits: int = 12
    forbid_extra_properties: bool = True


@dataclass(frozen=True)
class ToolGrammar:
    name: str
    # Normalised schema as JSON, keys in the client's order: engines generate properties in that
    # order, so sorting keys here would reorder the model's arguments.
    schema_json: str


@dataclass(frozen=True)
class GrammarSpec:
    shape: ToolCallShape
    special_pieces: frozenset[str]
    tools: tuple[ToolGrammar, ...]
    allow_text: bool
    allow_calls: bool
    parallel: bool
    max_whitespace: int
    # Structured output (response_format): when set, the text alternative is not free text but one
    # JSON value valid against this normalised schema (as JSON), written after the shape's text_open.
    text_schema_json: str | None = None

    def key(self) -> str:
        return json.dumps([
            [self.shape.text_open, self.shape.call_open, self.shape.name_close, self.shape.call_close,
             self.shape.call_separator], sorted(self.special_pieces),
            [[t.name, t.schema_json] for t in self.tools], self.allow_text, self.allow_calls, self.parallel,
            self.max_whitespace, self.text_schema_json,
        ])


class Matcher(ABC):
    """Tracks one sequence through the grammar."""

    @abstractmethod
    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of every token the grammar forbids next to -inf (in place, 1-D)."""

    @abstractmethod
    def consume(self, token_id: int) -> bool:
        """Advance by one generated token; False if the grammar rejected it."""

    @abstractmethod
    def is_finished(self) -> bool:
        """The grammar allows nothing but the end-of-turn token."""

    @abstractmethod
    def is_accepting(self) -> bool:
        """The output so far is complete (ending here is allowed)."""


class ConstraintEngine(ABC):
    """Prepares tokenizer data once (constructor) and compiles specs with an LRU cache."""

    name: str
    # Whether minimum/maximum are enforced; if not, the server adds no number bounds and refuses
    # schemas that carry them.
    enforces_number_bounds: bool = True

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], cache_size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.last_compile_seconds = 0.0

    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar for ``spec``; raises :class:`GrammarError` if it cannot be enforced."""
        key = spec.key()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.last_compile_seconds = 0.0
                return self._cache[key]
        start = time.perf_counter()
        compiled = self._compile(spec)
        self.last_compile_seconds = time.perf_counter() - start
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    @abstractmethod
    def _compile(self, spec: GrammarSpec) -> Any: ...

    @abstractmethod
    def matcher(self, compiled: Any) -> Matcher: ...
