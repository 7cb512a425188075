"""llguidance: the request's grammar as a Lark grammar with embedded JSON schemas.

The tokenizer bridge (``llguidance.hf.from_tokenizer``, about 0.3 s for a 49k vocabulary and 1 s
for Qwen's 152k) is built once in the constructor. Each token the matcher fills a packed bitmask
(one bit per token) in native code; numpy unpacks it and writes -inf through it into the logits
(tens of microseconds, where a Python list of allowed ids would take milliseconds).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from serve.constraints.base import ConstraintEngine, GrammarError, GrammarSpec, Matcher, keep_only
from serve.constraints.schema import is_empty_object

log = logging.getLogger(__name__)


def _piece(piece: str, specials: frozenset[str]) -> str:
    """A Lark expression for a literal piece of the shape.

    Substrings that are single added tokens of the tokenizer are named as tokens (``<tool_call>``
    in Qwen2.5, the octupus markers): llguidance never spells them out of ordinary text.
    """
    parts: list[str] = []
    rest = piece
    while rest:
        hits = [(rest.find(t), -len(t), t) for t in specials if t and t in rest]
        if not hits:
            parts.append(json.dumps(rest))
            break
        pos, _, token = min(hits)
        if pos:
            parts.append(json.dumps(rest[:pos]))
        parts.append(token)
        rest = rest[pos + len(token):]
    return " ".join(parts)


def _literal_regex_char_class_excluding(ch: str) -> str:
    return "[^" + ("\\" + ch if ch in "\\]^-[" else ch) + "]"


def _json_with(schema_json: str, ws: dict[str, Any]) -> str:
    """A schema for ``%json`` with our whitespace rule; the client's own ``x-guidance`` (e.g. lenient)
    would defeat failing closed, so it is replaced."""
    schema = json.loads(schema_json)
    if isinstance(schema, dict):
        schema["x-guidance"] = ws
    return json.dumps(schema)


def build_lark(spec: GrammarSpec) -> str:
    """The Lark grammar for ``spec`` (also what vLLM's ``guidance`` backend accepts)."""
    s = spec.shape
    sp = spec.special_pieces
    lines = ["%llguidance {}"]
    alts = []
    ws: dict[str, Any] = ({"whitespace_pattern": f"[\\x20\\x0A]{{0,{spec.max_whitespace}}}"}
                          if spec.max_whitespace > 0 else {"whitespace_flexible": False})
    if spec.allow_text and spec.text_schema_json is not None:
        # Structured output: the answer is one JSON value of the schema (JSON never starts with a call's '<').
        alts.append("text")
        lines.append(f"text: {_piece(s.text_open, sp)} answer" if s.text_open else "text: answer")
        lines.append(f"answer: %json {_json_with(spec.text_schema_json, ws)}")
    elif spec.allow_text:
        alts.append("text")
        if s.text_open:
            lines.append(f"text: {_piece(s.text_open, sp)} TEXT")
            lines.append("TEXT: /(?s:.*)/")
        else:
            # Without an opening marker, text must not begin like a call, or a malformed call
            # could slip through as "text".
            first = _literal_regex_char_class_excluding(s.call_open[0])
            lines.append("text: TEXT")
            lines.append(f"TEXT: /({first}(?s:.*))?/")
    if spec.allow_calls and spec.tools:
        alts.append("calls")
        if not spec.parallel:
            lines.append("calls: call")
        elif s.call_separator:
            lines.append(f"calls: call ({_piece(s.call_separator, sp)} call)*")
        else:
            lines.append("calls: call+")
        lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(spec.tools))))
        for i, tool in enumerate(spec.tools):
            # Name and the text closing it form one literal, so that "get" and "get_weather" never
            # compete as lexemes; a special token closing the name separates them anyway.
            parts = [_piece(s.call_open, sp), _piece(tool.name + s.name_close, sp)]
            parts.append(f"args_{i}")
            if s.call_close:
                parts.append(_piece(s.call_close, sp))
            lines.append(f"call_{i}: " + " ".join(parts))
            if is_empty_object(json.loads(tool.schema_json)):
                lines.append(f'args_{i}: "{{}}"')
            else:
                lines.append(f"args_{i}: %json {_json_with(tool.schema_json, ws)}")
    if not alts:
        raise GrammarError("nothing to generate: neither text nor a tool call is allowed")
    r = spec.reasoning
    if r is None:
        lines.insert(1, "start: " + " | ".join(alts))
    else:
        # Thinking first: free text that never spells the close marker (so the first close is the
        # real one, in tokens and in text), cut at the budget, where only the close marker may follow.
        think = [_piece(r.open, sp)] if r.open else []
        think += ["reasoning", _piece(r.close, sp)] + ([_piece(r.separator, sp)] if r.separator else [])
        lines[1:1] = ["start: think answer_turn", "answer_turn: " + " | ".join(alts), "think: " + " ".join(think),
                      f"reasoning[max_tokens={r.budget}]: REASONING",
                      f"REASONING: /(?s:.*)/ & ~/(?s:.*){_regex_escape(r.close)}(?s:.*)/"]
    return "\n".join(lines) + "\n"


def _regex_escape(text: str) -> str:
    """``text`` as a literal inside a Lark /regex/ (the slash delimits it)."""
    return re.escape(text).replace("/", "\\/")


def _error_summary(error: str) -> str:
    """llguidance's error without the grammar listing it appends (lines like ``   3 | ...``)."""
    lines = []
    for line in error.strip().splitlines():
        if line.lstrip()[:1].isdigit() and "|" in line[:8]:
            break
        if line.strip() and line.strip() != "^" * len(line.strip()):
            lines.append(line.strip())
    return " ".join(lines[:4])[:500] or "unknown error"


_BIT = np.arange(32, dtype=np.int64)
# At most this many allowed tokens: the mask is read and written from Python (below).
SPARSE_TOKENS = 64
def sparse_ids(words: np.ndarray, n: int, used: np.ndarray | None = None) -> list[int] | None:
    """The ids under ``n`` whose bits are set in ``words``, ascending, when at most ``SPARSE_TOKENS``
    bits are set; else None. One numpy call finds the words in use; their bits are read in Python.

    Measured between forward passes (caches cold, docs/results.md, sixteenth session): 34-39 us on
    both vocabularies for a handful of allowed tokens, where scanning the mask's bytes with a regex
    took 83 us on SmolLM2's 49k and 161 us on Qwen2.5's 152k (a pass over every byte). ``used``: the
    indices of the nonzero words when the caller has them already."""
    if used is None:
        used = words.nonzero()[0]
    if len(used) > SPARSE_TOKENS:
        return None
    values = [value & 0xFFFFFFFF for value in words[used].tolist()]
    if sum(value.bit_count() for value in values) > SPARSE_TOKENS:
        return None
    ids = []
    for index, value in zip(used.tolist(), values, strict=True):
        while value:
            low = value & -value
            token = 32 * index + low.bit_length() - 1
            if token < n:
                ids.append(token)
            value ^= low
    return ids


def _mask_in_place(out: np.ndarray, words: np.ndarray, n: int) -> None:
    """-inf into ``out`` (float32 logits) at every token whose bit in ``words`` is clear; rows past
    ``n`` (padded embedding rows) are never valid tokens. Bits are little-endian within each 32-bit
    word.

    The mask is computed between forward passes, which leave the caches cold: there each numpy call
    on a small array cost 30-90 us (the three that found a handful of allowed tokens took 150 us of a
    250 us mask, SmolLM2's vocabulary, docs/results.md), against a few us warm. So with at most
    ``SPARSE_TOKENS`` allowed (a choice between a few spellings of a key or a bracket) one numpy call
    finds them (:func:`sparse_ids`) and only those tokens are kept (:func:`_keep_tokens`); otherwise
    :func:`_mask_many` writes it with numpy.
    """
    used = words.nonzero()[0]
    allowed = sparse_ids(words, n, used)
    if allowed is not None:
        _keep_tokens(out, allowed)
    else:
        _mask_many(out, words, n, used)


def _keep_tokens(out: np.ndarray, allowed: list[int]) -> None:
    """-inf everywhere in ``out`` but at ``allowed``: their values saved, the row filled, put back."""
    kept = [out[token] for token in allowed]
    out.fill(-np.inf)
    for token, value in zip(allowed, kept, strict=True):
        out[token] = value


def _mask_many(out: np.ndarray, words: np.ndarray, n: int, used: np.ndarray) -> None:
    """The mask written with numpy: with a few words in use (inside JSON) the allowed values are
    saved, the row filled and they put back (a few tens of microseconds on a 152k vocabulary); under
    free text nearly all tokens are allowed, and -inf is written through the forbidden bits only.
    Unpacking with torch shifts and a masked fill took 250-350 us a token. ``used``: the indices of
    the nonzero words, which every caller has found already for :func:`sparse_ids` (finding them
    again cost 20-30 us cold on 152k tokens)."""
    if len(used) * 8 <= len(words):
        bits = np.unpackbits(words[used].view(np.uint8), bitorder="little").view(np.bool_).reshape(-1, 32)
        allowed = (used[:, None] * 32 + _BIT)[bits]
        allowed = allowed[allowed < n]
        kept = out[allowed]
        out.fill(-np.inf)
        out[allowed] = kept
    else:
        forbid = np.unpackbits((~words).view(np.uint8), bitorder="little")[:n].view(np.bool_)
        np.copyto(out[:n], np.float32(-np.inf), where=forbid)
        out[n:] = -np.inf


class CompiledGrammar:
    """A compiled grammar: the prototype matcher every request copies, and what is the same for
    every request of this grammar at its first token: the mask (the dearest of a turn: at the choice
    between text and calls nearly the whole vocabulary is walked, about 2 ms on Qwen's 152k tokens
    against 60 us for a mask inside JSON) and the forced text (tokenizing it took up to 2 ms), each
    computed once per grammar."""

    def __init__(self, prototype: llguidance.LLMatcher) -> None:
        self.prototype = prototype
        self.first_words: np.ndarray | None = None
        self.first_forced: tuple[bytes, list[int]] | None = None


class LLGuidanceMatcher(Matcher):
    def __init__(self, compiled: CompiledGrammar, vocab_size: int) -> None:
        self._compiled = compiled
        self._m = compiled.prototype.deep_copy()
        self._vocab = vocab_size
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._at_start = True
        self._forced: tuple[bytes, list[int]] | None = None  # at this position, once asked
        # This position's mask, the indices of its nonzero words and its allowed tokens when few
        # (sparse_ids), once computed.
        self._mask: tuple[np.ndarray, np.ndarray, list[int] | None] | None = None

    def _forced_here(self) -> tuple[bytes, list[int]]:
        """The bytes the grammar forces from here and the tokens the tokenizer writes them as (a last
        token that longer text could merge into left out): computed once per position, and once per
        grammar at the first."""
        if self._forced is None:
            if self._at_start and self._compiled.first_forced is not None:
                self._forced = self._compiled.first_forced
            elif self._m.is_stopped() or self._m.is_error():
                self._forced = (b"", [])
            else:
                forced_bytes = self._m.compute_ff_bytes()
                self._forced = (forced_bytes, list(self._m.compute_ff_tokens()) if forced_bytes else [])
                if self._at_start:
                    self._compiled.first_forced = self._forced  # a benign race: every value is equal
        return self._forced

    def _mask_here(self) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
        """This position's bitmask and its allowed tokens when at most ``SPARSE_TOKENS`` (else None):
        the grammar's first mask is computed once per grammar, any other once per position (greedy
        rows ask :meth:`allowed_few` first, and :meth:`apply` reuses what it found)."""
        if self._mask is None:
            words = self._compiled.first_words if self._at_start else None
            if words is None:
                self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
                words = self._words
                if self._at_start:
                    self._compiled.first_words = self._words.copy()  # a benign race: every copy is equal
            used = words.nonzero()[0]
            self._mask = (words, used, sparse_ids(words, self._vocab, used))
        return self._mask

    def apply(self, logits: torch.Tensor) -> None:
        forced = self._forced[1] if self._forced is not None else []
        if forced:
            # Where text is forced and its first token known, that token is the only one the mask
            # allows (tests/test_check_before_mask.py): no walk of the vocabulary.
            keep_only(logits, forced[0])
            return
        words, used, few = self._mask_here()
        n = min(logits.shape[-1], self._vocab)
        if logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.is_contiguous():
            out = logits.detach().numpy()  # shares the logits' memory
            if few is not None:
                _keep_tokens(out, [token for token in few if token < n])
            else:
                _mask_many(out, words, n, used)
        else:
            forbid = np.unpackbits((~words).view(np.uint8), bitorder="little")[:n].view(np.bool_)
            logits[:n].masked_fill_(torch.from_numpy(forbid).to(logits.device), float("-inf"))
            logits[n:] = float("-inf")

    def allowed_few(self) -> list[int] | None:
        """At most ``SPARSE_TOKENS`` allowed tokens, from this position's mask (kept for :meth:`apply`);
        where forced text's first token is known, that token alone."""
        forced = self._forced_here()[1]
        if forced:
            return [forced[0]]
        return self._mask_here()[2]

    def allows(self, token_id: int) -> bool:
        """The grammar accepts the token's bytes here (``validate_tokens``, 1-3 us), unless bytes are
        forced here: there the mask admits only the tokenizer's own spelling of the forced text
        (after ``</tool_`` it allows ``call``, not ``cal``), which the byte check would not see, so
        only the first of the forced tokens is taken as allowed (none when the forced text could
        still merge into a longer token: the mask decides). Checked against the mask on random walks
        through tool grammars on both vocabularies (tests/test_check_before_mask.py)."""
        if not 0 <= token_id < self._vocab or self.refuses_every_check():
            return False
        forced = self._forced_here()[1]
        if forced:
            return token_id == forced[0]
        return self._m.validate_tokens([token_id]) == 1

    def refuses_every_check(self) -> bool:
        """Where bytes are forced but their last token could still merge into a longer one (no forced
        token), or the grammar has stopped, :meth:`allows` refuses every token: the mask decides."""
        if self._m.is_stopped() or self._m.is_error():
            return True
        forced_bytes, forced = self._forced_here()
        return bool(forced_bytes) and not forced

    def consume(self, token_id: int) -> bool:
        self._at_start = False
        self._forced = None
        self._mask = None
        return self._m.consume_token(token_id)

    def forced_tokens(self) -> list[int]:
        """llguidance's fast-forward tokens: the bytes the grammar forces from here, as the tokens
        the tokenizer would write them (a last token that longer text could merge into is left out)."""
        return list(self._forced_here()[1])

    def is_finished(self) -> bool:
        return self._m.is_stopped()

    def is_accepting(self) -> bool:
        return self._m.is_accepting()

    @property
    def error(self) -> str:
        return self._m.get_error()


class LLGuidanceEngine(ConstraintEngine):
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], cache_size: int = 64) -> None:
        super().__init__(tokenizer, vocab_size, stop_token_ids, cache_size)
        n_vocab = max(len(tokenizer), 1)
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=self.stop_token_ids)
        self.mask_vocab = n_vocab
        log.info("llguidance %s: tokenizer prepared (%d tokens, stop ids %s)", llguidance.__version__,
                 n_vocab, self.stop_token_ids)

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        grammar = build_lark(spec)
        # The compiled form is a fresh matcher; requests get deep copies, which skips re-parsing the
        # grammar. Constructing it reports every error the separate validation call would (a grammar
        # it cannot enforce, a schema keyword it does not support), so the grammar is parsed once:
        # half the compile time of a large tool set.
        prototype = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if prototype.is_error():
            raise GrammarError(f"llguidance cannot enforce the schemas: {_error_summary(prototype.get_error())}")
        return CompiledGrammar(prototype)

    def matcher(self, compiled: CompiledGrammar) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(compiled, self.mask_vocab)
