"""lm-format-enforcer, the original project's engine, expressing the grammar with its parser combinators.

The grammar is built from ``StringParser`` (fixed pieces of the shape and the tool names),
``JsonSchemaParser`` (each tool's arguments), ``SequenceParser`` / ``UnionParser``, plus two small
parsers of our own: free text, and "zero or more further calls" for parallel calls.

Limits of this engine, handled here rather than discovered in production:
- it ignores numeric bounds, ``uniqueItems``, ``format`` and other keywords: schemas using them
  are refused with a 400 (fail closed) instead of being half enforced;
- its own tokenizer preparation drops every special token, so the shape's special tokens are
  added back here (otherwise it could never emit ``<|FUNCTION_CALL|>``);
- it lets a few invalid strings through (raw control characters): the server's validation after
  generation catches those as engine faults (500, counted in /metrics);
- tokens holding part of a multi-byte character are left out: the enforcer cannot follow them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import torch
from lmformatenforcer import (
    CharacterLevelParser,
    CharacterLevelParserConfig,
    JsonSchemaParser,
    SequenceParser,
    StringParser,
    TokenEnforcer,
    TokenEnforcerTokenizerData,
    UnionParser,
)
from lmformatenforcer.tokenlist import TokenList

from serve.constraints.base import ConstraintEngine, GrammarError, GrammarSpec, Matcher, reasoning_gate
from serve.constraints.schema import is_empty_object

log = logging.getLogger(__name__)

# Keywords lm-format-enforcer 0.11 acts on (or that carry no constraint).
_ENFORCED = {"type", "properties", "required", "items", "enum", "const", "anyOf", "allOf", "oneOf", "$ref", "$defs",
             "definitions", "minLength", "maxLength", "pattern", "minItems", "maxItems", "additionalProperties",
             "description", "title", "default", "examples", "example", "nullable", "$schema", "$id"}
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SUB_MAPS = ("properties", "$defs", "definitions")
_SUB_LISTS = ("anyOf", "allOf", "oneOf")


def unenforced_keywords(node: Any, path: str = "") -> list[str]:
    """Keywords of a schema that this engine would silently ignore, with where they are (and boolean
    subschemas, which it fails on mid-generation)."""
    if isinstance(node, bool):
        return [f"a boolean schema at {path or '/'}"]
    if not isinstance(node, dict):
        return []
    found = [f"'{k}' at {path or '/'}" for k in node if k not in _ENFORCED]
    for key in _SUB_MAPS:
        for name, child in (node.get(key) or {}).items():
            found += unenforced_keywords(child, f"{path}/{key}/{name}")
    for key in _SUB_LISTS:
        for i, child in enumerate(node.get(key) or []):
            found += unenforced_keywords(child, f"{path}/{key}/{i}")
    found += unenforced_keywords(node.get("items"), f"{path}/items")
    extra = node.get("additionalProperties")
    if not isinstance(extra, bool):  # true / false there is what the engine reads
        found += unenforced_keywords(extra, f"{path}/additionalProperties")
    return found


class AnyText(CharacterLevelParser):
    """Any text; optionally not starting with one character (so text cannot look like a call)."""

    def __init__(self, alphabet: str, not_first: str = "") -> None:
        super().__init__(CharacterLevelParserConfig(alphabet=alphabet))
        self.alphabet = alphabet
        self.not_first = not_first

    def add_character(self, new_character: str) -> CharacterLevelParser:
        return AnyText(self.alphabet) if self.not_first else self

    def get_allowed_characters(self) -> str:
        return self.alphabet.replace(self.not_first, "") if self.not_first else self.alphabet

    def can_end(self) -> bool:
        return True

    def cache_key(self) -> Any:
        # Lets the enforcer reuse the (large) allowed-token list of free text across steps.
        return ("any_text", self.not_first)


class Seq(SequenceParser):
    """A SequenceParser that keeps the enforcer's fast path for JSON strings.

    The stock one reports a shortcut only when it holds a single parser, so inside a string
    argument (sequence: arguments, then more calls) the enforcer walked the whole vocabulary in
    Python for every token. While the first parser cannot end, nothing after it can contribute
    characters, so its shortcut is the sequence's.
    """

    def add_character(self, new_character: str) -> CharacterLevelParser:
        return _keep_fast(super().add_character(new_character))

    def shortcut_key(self) -> Any:
        first = self.parsers[0]
        return first.shortcut_key() if len(self.parsers) == 1 or not first.can_end() else None


def _keep_fast(parser: CharacterLevelParser) -> CharacterLevelParser:
    if type(parser) is SequenceParser:
        return Seq(parser.parsers)
    if type(parser) is UnionParser:
        return UnionParser([_keep_fast(p) for p in parser.parsers])
    return parser


class MoreCalls(CharacterLevelParser):
    """Zero or more ``separator call`` repetitions, built lazily (the grammar is recursive)."""

    def __init__(self, separator: str, make_call: Callable[[], CharacterLevelParser]) -> None:
        super().__init__()
        self.separator = separator
        self.make_call = make_call
        self._inner: CharacterLevelParser | None = None

    def _expand(self) -> CharacterLevelParser:
        if self._inner is None:
            parts = [StringParser(self.separator)] if self.separator else []
            self._inner = Seq(parts + [self.make_call(), MoreCalls(self.separator, self.make_call)])
        return self._inner

    def add_character(self, new_character: str) -> CharacterLevelParser:
        return self._expand().add_character(new_character)

    def get_allowed_characters(self) -> str:
        return self._expand().get_allowed_characters()

    def can_end(self) -> bool:
        return True


class LMFEMatcher(Matcher):
    def __init__(self, enforcer: TokenEnforcer, first_allowed: Callable[[], list[int]] | None = None) -> None:
        self.enforcer = enforcer
        self.tokens: list[int] = []
        self.first_allowed = first_allowed

    def _allowed(self) -> list[int]:
        if not self.tokens and self.first_allowed is not None and () not in self.enforcer.prefix_states:
            # Seed the root state with the precomputed first-token set (see _first_allowed).
            allowed = TokenList(False, self.enforcer.vocab_size)
            allowed.extend(self.first_allowed())
            self.enforcer.prefix_states[()] = TokenEnforcer.OutputTensorState(
                parser=self.enforcer.root_parser, allowed_tokens=allowed)
        return self.enforcer.get_allowed_tokens(self.tokens).allowed_tokens

    def _state(self) -> Any:
        self._allowed()
        return self.enforcer.prefix_states[tuple(self.tokens)]

    def apply(self, logits: torch.Tensor) -> None:
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
        keep[torch.tensor(self._allowed(), dtype=torch.long)] = True
        logits.masked_fill_(~keep, float("-inf"))

    def consume(self, token_id: int) -> bool:
        self.tokens.append(token_id)
        return True

    def is_finished(self) -> bool:
        parser = self._state().parser
        return parser.can_end() and not parser.get_allowed_characters()

    def is_accepting(self) -> bool:
        return self._state().parser.can_end()


class LMFormatEnforcerEngine(ConstraintEngine):
    name = "lm-format-enforcer"
    enforces_number_bounds = False

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], cache_size: int = 64,
                 special_tokens: frozenset[str] = frozenset()) -> None:
        super().__init__(tokenizer, vocab_size, stop_token_ids, cache_size)
        self.data = self._tokenizer_data(tokenizer, special_tokens)
        self.alphabet = self.data.tokenizer_alphabet
        # Only AnyText reports a cache key, and its allowed tokens depend on the tokenizer alone:
        # one cache for every grammar means free text walks the vocabulary once per process.
        self.token_cache: dict[Any, Any] = {}
        log.info("lm-format-enforcer: tokenizer prepared (%d tokens)", len(self.data.regular_tokens))

    def _tokenizer_data(self, tokenizer: Any, keep_special: frozenset[str]) -> TokenEnforcerTokenizerData:
        vocab = len(tokenizer)
        keep_ids = {tokenizer.convert_tokens_to_ids(t) for t in keep_special}
        skip = set(tokenizer.all_special_ids) - keep_ids
        # Whether a token starts a word shows when it is decoded after another token: a
        # SentencePiece-style leading space appears only then.
        anchor = tokenizer.encode("0", add_special_tokens=False)[-1]
        anchor_text = tokenizer.decode([anchor])
        regular = []
        for idx in range(vocab):
            if idx in skip:
                continue
            after = tokenizer.decode([anchor, idx])[len(anchor_text):]
            alone = tokenizer.decode([idx])
            if "\ufffd" in alone or _CONTROL.search(alone):
                # A piece of a multi-byte character: the enforcer compares decoded text and turns
                # the replacement character into a forced stop mid-call (characters stay reachable
                # through tokens holding them whole). Control characters: it would put them raw
                # into JSON strings.
                continue
            regular.append((idx, after, len(after) > len(alone)))

        def decode(tokens: list[int]) -> str:
            return tokenizer.decode(tokens).rstrip("\ufffd")

        return TokenEnforcerTokenizerData(regular, decode, list(self.stop_token_ids), False, vocab)

    def _compile(self, spec: GrammarSpec) -> Any:
        tools = []
        for tool in spec.tools:
            schema = json.loads(tool.schema_json)
            problems = unenforced_keywords(schema)
            if problems:
                raise GrammarError(f"lm-format-enforcer cannot enforce tool '{tool.name}': keywords "
                                   f"{', '.join(problems[:5])} are not supported (use --engine llguidance)")
            tools.append((tool.name, schema))
        answer = None
        if spec.allow_text and spec.text_schema_json is not None:
            answer = json.loads(spec.text_schema_json)
            problems = unenforced_keywords(answer)
            if problems:
                raise GrammarError(f"lm-format-enforcer cannot enforce the response_format schema: keywords "
                                   f"{', '.join(problems[:5])} are not supported (use --engine llguidance)",
                                   param="response_format")
        if not (spec.allow_text or (spec.allow_calls and tools)):
            raise GrammarError("nothing to generate: neither text nor a tool call is allowed")
        # Parsers are cheap to build and carry per-sequence state, so the compiled form is the recipe;
        # it is built once here so that a schema the engine cannot parse fails closed now (400).
        compiled = {"spec": spec, "tools": tools, "answer": answer}
        config = CharacterLevelParserConfig(alphabet=self.alphabet, max_consecutive_whitespaces=spec.max_whitespace)
        if answer is not None:
            try:
                JsonSchemaParser(answer, config=config)
            except Exception as exc:  # the library raises plain exceptions for schemas it does not take
                raise GrammarError(f"lm-format-enforcer cannot enforce the response_format schema: {exc}",
                                   param="response_format") from None
        for name, schema in tools:
            try:
                JsonSchemaParser(schema, config=config)
            except Exception as exc:
                raise GrammarError(f"lm-format-enforcer cannot enforce tool '{name}': {exc}") from None
        return compiled

    def _root(self, compiled: dict[str, Any], branches_wanted: str = "all") -> CharacterLevelParser:
        spec: GrammarSpec = compiled["spec"]
        s = spec.shape
        config = CharacterLevelParserConfig(alphabet=self.alphabet, max_consecutive_whitespaces=spec.max_whitespace)

        def one_call() -> CharacterLevelParser:
            options = []
            for name, schema in compiled["tools"]:
                arguments = StringParser("{}") if is_empty_object(schema) else JsonSchemaParser(schema, config=config)
                parts: list[CharacterLevelParser] = [StringParser(s.call_open + name + s.name_close), arguments]
                if s.call_close:
                    parts.append(StringParser(s.call_close))
                options.append(Seq(parts))
            return options[0] if len(options) == 1 else UnionParser(options)

        branches: list[CharacterLevelParser] = []
        if spec.allow_text and compiled["answer"] is not None and branches_wanted in ("all", "text"):
            # Structured output: one JSON value of the response_format schema.
            answer = JsonSchemaParser(compiled["answer"], config=config)
            branches.append(Seq([StringParser(s.text_open), answer]) if s.text_open else answer)
        elif spec.allow_text and branches_wanted in ("all", "text"):
            if s.text_open:
                branches.append(Seq([StringParser(s.text_open), AnyText(self.alphabet)]))
            else:
                branches.append(AnyText(self.alphabet, not_first=s.call_open[0]))
        if spec.allow_calls and compiled["tools"] and branches_wanted in ("all", "calls"):
            if spec.parallel:
                branches.append(Seq([one_call(), MoreCalls(s.call_separator, one_call)]))
            else:
                branches.append(one_call())
        return branches[0] if len(branches) == 1 else UnionParser(branches)

    def _first_allowed(self, compiled: dict[str, Any]) -> list[int]:
        """First-token set of a text-or-call grammar, computed per branch and cached per grammar.

        The enforcer walks the vocabulary in Python; under the root's union of free text and calls
        that walk has no cache and took minutes on Qwen's 152k vocabulary for every request. Per
        branch it is cheap: free text hits the engine-wide cache, calls start with a fixed string.
        """
        if "first" not in compiled:
            allowed: set[int] = set()
            for branch in ("text", "calls"):
                enforcer = TokenEnforcer(self.data, self._root(compiled, branch))
                enforcer.allowed_token_cache = self.token_cache
                allowed.update(enforcer.get_allowed_tokens([]).allowed_tokens)
            compiled["first"] = sorted(allowed)
        return compiled["first"]

    def matcher(self, compiled: dict[str, Any]) -> Matcher:
        enforcer = TokenEnforcer(self.data, self._root(compiled))
        enforcer.allowed_token_cache = self.token_cache
        spec: GrammarSpec = compiled["spec"]
        both = spec.allow_text and spec.allow_calls and compiled["tools"]
        answer = LMFEMatcher(enforcer, (lambda: self._first_allowed(compiled)) if both else None)
        if spec.reasoning is None:
            return answer
        # The enforcer follows characters, so a token budget is kept token by token, around it.
        return reasoning_gate(self.tokenizer, spec.reasoning, answer, self.stop_token_ids)
