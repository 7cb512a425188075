"""Constraint engines behind one interface (:mod:`serve.constraints.base`)."""

from __future__ import annotations

from typing import Any

from serve.constraints.base import ConstraintEngine, GrammarError, GrammarSpec, JsonLimits, Matcher, ToolGrammar

ENGINES = ("llguidance", "lm-format-enforcer")


def make_engine(name: str, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                special_tokens: frozenset[str] = frozenset(), cache_size: int = 64) -> ConstraintEngine:
    """Build an engine; its tokenizer data is prepared here, once, not per request.

    ``special_tokens``: special tokens the grammar uses (the format's markers); engines whose
    tokenizer preparation drops special tokens keep these. ``cache_size``: compiled grammars kept.
    """
    if name == "llguidance":
        from serve.constraints.llguidance_engine import LLGuidanceEngine

        return LLGuidanceEngine(tokenizer, vocab_size, stop_token_ids, cache_size=cache_size)
    if name == "lm-format-enforcer":
        from serve.constraints.lmfe_engine import LMFormatEnforcerEngine

        return LMFormatEnforcerEngine(tokenizer, vocab_size, stop_token_ids, cache_size=cache_size,
                                      special_tokens=special_tokens)
    raise ValueError(f"unknown constraint engine '{name}' (choose from {', '.join(ENGINES)})")


__all__ = ["ConstraintEngine", "GrammarError", "GrammarSpec", "JsonLimits", "Matcher", "ToolGrammar", "make_engine",
           "ENGINES"]
