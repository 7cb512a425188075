"""The constraint-engine interface every backend uses, and the engine-neutral grammar request.

A request's grammar is fully described by :class:`GrammarSpec`: the output shape of the format,
the tools that may be called (with schemas already normalised by :mod:`serve.constraints.schema`),
whether text and/or calls are allowed, whether more than one call may follow, and whether text must
be JSON valid against a schema (``response_format``). An engine
compiles a spec once (cached by its key) and hands out a fresh :class:`Matcher` per sequence.
"""

from __future__ import annotations

import dataclasses
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
class ReasoningSpec:
    """A reasoning block before the answer: ``open`` (empty when the prompt already opened it), free
    text that never holds ``close``, ``close`` after at most ``budget`` tokens, then ``separator``."""

    open: str
    close: str
    separator: str
    budget: int


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
    # A reasoning model's thinking, bounded, before the choice between text and calls.
    reasoning: ReasoningSpec | None = None

    def key(self) -> str:
        return json.dumps([
            [self.shape.text_open, self.shape.call_open, self.shape.name_close, self.shape.call_close,
             self.shape.call_separator], sorted(self.special_pieces),
            [[t.name, t.schema_json] for t in self.tools], self.allow_text, self.allow_calls, self.parallel,
            self.max_whitespace, self.text_schema_json,
            dataclasses.astuple(self.reasoning) if self.reasoning is not None else None,
        ])


def keep_only(logits: torch.Tensor, token_id: int) -> None:
    """Every logit but ``token_id``'s set to -inf, in place (a mask that allows one token)."""
    value = logits[token_id].clone()
    logits.fill_(float("-inf"))
    logits[token_id] = value


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

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next, whatever the model would prefer (none when the engine
        cannot tell). A backend may feed them without asking the model for each one."""
        return []

    def allows(self, token_id: int) -> bool:
        """True only when ``token_id`` is certainly one that :meth:`apply` would leave allowed next,
        told without computing the mask; False means "masked, or cannot tell cheaply" (the default).

        This lets a row check the token the model prefers first and compute the whole mask only when
        that token is refused (see ``serve.backends.decode_row``). An engine must never answer True for
        a token the mask forbids: greedy answers would change."""
        return False

    def refuses_every_check(self) -> bool:
        """True where :meth:`allows` answers False for every token at this position, so that checking
        the model's best tokens one by one is wasted work and the mask decides at once (False, the
        default: a check may pass)."""
        return False

    def allowed_few(self) -> list[int] | None:
        """The tokens :meth:`apply` would leave allowed next, ascending, when they are few (the engine
        decides how few), else None (the default: cannot tell). An engine may compute its mask for
        this and reuse it in :meth:`apply` at the same position. A greedy row then takes the best of
        them without writing the mask into the logits."""
        return None


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


class ReasoningGate(Matcher):
    """A reasoning block enforced token by token before the answer's own matcher, for engines whose
    grammar cannot hold it (lm-format-enforcer counts characters, not tokens, so it cannot bound
    the block by a token budget).

    The open marker (unless the prompt holds it), then any tokens but the stop tokens and the open
    marker, the close marker at the latest after ``budget`` of them, the separator's tokens, and from
    there ``inner``. Like the llguidance grammar, nothing of the reasoning is ever a call: the
    answer's grammar starts after the close marker.
    """

    def __init__(self, inner: Matcher, open_ids: list[int], close_id: int, separator_ids: list[int], budget: int,
                 banned: list[int]) -> None:
        self.inner = inner
        self.forced = list(open_ids)  # tokens that must come next (the open marker, then the separator)
        self.close_id = close_id
        self.separator_ids = list(separator_ids)
        self.budget = budget
        self.banned_ids = set(banned) | set(open_ids)
        self.banned = torch.tensor(sorted(self.banned_ids), dtype=torch.long)
        self.thinking = True  # until the close marker
        self.used = 0  # reasoning tokens so far

    def apply(self, logits: torch.Tensor) -> None:
        if self.forced:
            keep_only(logits, self.forced[0])
        elif self.thinking and self.used >= self.budget:
            keep_only(logits, self.close_id)
        elif self.thinking:
            logits[self.banned] = float("-inf")
        else:
            self.inner.apply(logits)

    def consume(self, token_id: int) -> bool:
        if self.forced:
            if token_id != self.forced[0]:
                return False
            self.forced.pop(0)
            return True
        if self.thinking:
            if token_id == self.close_id:
                self.thinking = False
                self.forced = list(self.separator_ids)
                return True
            if self.used >= self.budget or token_id in self.banned_ids:
                return False
            self.used += 1
            return True
        return self.inner.consume(token_id)

    def allows(self, token_id: int) -> bool:
        if self.forced:
            return token_id == self.forced[0]
        if self.thinking and self.used >= self.budget:
            return token_id == self.close_id
        if self.thinking:
            return token_id not in self.banned_ids
        return self.inner.allows(token_id)

    def forced_tokens(self) -> list[int]:
        if self.forced:
            return list(self.forced)
        return [] if self.thinking else self.inner.forced_tokens()

    def refuses_every_check(self) -> bool:
        return not (self.forced or self.thinking) and self.inner.refuses_every_check()

    def allowed_few(self) -> list[int] | None:
        if self.forced:
            return [self.forced[0]]
        if self.thinking:
            return [self.close_id] if self.used >= self.budget else None
        return self.inner.allowed_few()

    def is_finished(self) -> bool:
        return not (self.thinking or self.forced) and self.inner.is_finished()

    def is_accepting(self) -> bool:
        return not (self.thinking or self.forced) and self.inner.is_accepting()


def reasoning_gate(tokenizer: Any, reasoning: ReasoningSpec, inner: Matcher,
                   stop_token_ids: list[int]) -> ReasoningGate:
    """:class:`ReasoningGate` for ``reasoning`` on ``tokenizer`` (its markers must be single tokens)."""
    vocab = tokenizer.get_vocab()
    missing = [m for m in (reasoning.open, reasoning.close) if m and m not in vocab]
    if missing:
        raise GrammarError(f"the reasoning markers {missing} are not single tokens of this tokenizer", param="model")
    separator = tokenizer.encode(reasoning.separator, add_special_tokens=False) if reasoning.separator else []
    return ReasoningGate(inner, [vocab[reasoning.open]] if reasoning.open else [], vocab[reasoning.close], separator,
                         reasoning.budget, stop_token_ids)
