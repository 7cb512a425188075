"""Grammars enforced by another process (vLLM's engine), with a local check of what comes back.

vLLM V1 applies structured outputs itself, batched and overlapped with the forward pass, so the
server hands it the request's grammar instead of a matcher:

- ``llguidance``: the Lark grammar of :func:`serve.constraints.llguidance_engine.build_lark`, for
  vLLM's ``guidance`` backend; every token vLLM returns is replayed through a local llguidance
  matcher of the same grammar, so a token vLLM should never have sampled fails the request.
- ``lm-format-enforcer``: the grammar description itself (:func:`spec_to_payload`), which the
  logits processor of :mod:`serve.backends.vllm_lmfe_processor` compiles inside the engine process.

Compilation (and so every fail-closed 400) stays the wrapped engine's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from serve.constraints.base import ConstraintEngine, GrammarSpec, Matcher, ReasoningSpec, ToolGrammar
from toolcall.shapes import ToolCallShape


@dataclass(frozen=True)
class RemoteGrammar:
    """A compiled request grammar that vLLM enforces, plus what the server keeps to check it."""

    engine: str  # llguidance | lm-format-enforcer
    spec: GrammarSpec
    local: Any  # the engine's own compiled form (llguidance: replayed to check vLLM's tokens)
    lark: str | None = None  # llguidance route: the grammar vLLM's guidance backend receives


class RemoteMatcher(Matcher):
    """The matcher the core hands to :meth:`VLLMBackend.generate`.

    vLLM applies the mask itself; this object carries the grammar to send and, on the llguidance
    route, a local matcher that replays vLLM's tokens as an independent check.
    """

    def __init__(self, grammar: RemoteGrammar, local: Matcher | None) -> None:
        self.grammar = grammar
        self.local = local

    def apply(self, logits: torch.Tensor) -> None:
        if self.local is None:
            raise RuntimeError("this grammar is applied inside vLLM")
        self.local.apply(logits)

    def consume(self, token_id: int) -> bool:
        return self.local.consume(token_id) if self.local is not None else True

    def is_finished(self) -> bool:
        return self.local.is_finished() if self.local is not None else False

    def is_accepting(self) -> bool:
        return self.local.is_accepting() if self.local is not None else True


class RemoteGrammarEngine(ConstraintEngine):
    """Wraps a constraint engine so that its grammars can be sent to vLLM.

    Compilation (and so every fail-closed 400) stays the wrapped engine's; the wrapper only adds
    the form vLLM needs. Name, number-bound support and compile timing are the wrapped engine's,
    so metrics and error messages are unchanged.
    """

    def __init__(self, inner: ConstraintEngine) -> None:
        super().__init__(inner.tokenizer, inner.vocab_size, inner.stop_token_ids, cache_size=inner._cache_size)
        self.inner = inner
        self.name = inner.name
        self.enforces_number_bounds = inner.enforces_number_bounds

    def _compile(self, spec: GrammarSpec) -> RemoteGrammar:
        local = self.inner._compile(spec)
        lark = None
        if self.inner.name == "llguidance":
            from serve.constraints.llguidance_engine import build_lark

            lark = build_lark(spec)
        return RemoteGrammar(engine=self.inner.name, spec=spec, local=local, lark=lark)

    def matcher(self, compiled: RemoteGrammar) -> RemoteMatcher:
        # lm-format-enforcer has no cheap way to check a token (its consume only records it), so
        # its route relies on the core's validation after generation.
        local = self.inner.matcher(compiled.local) if compiled.lark is not None else None
        return RemoteMatcher(compiled, local)


def spec_to_payload(spec: GrammarSpec) -> dict[str, Any]:
    """A GrammarSpec as plain JSON-able data (it crosses to vLLM's engine process in extra_args)."""
    shape = dataclasses.asdict(spec.shape)
    shape["special_tokens"] = sorted(spec.shape.special_tokens)
    return {"shape": shape, "special_pieces": sorted(spec.special_pieces),
            "tools": [[t.name, t.schema_json] for t in spec.tools], "allow_text": spec.allow_text,
            "allow_calls": spec.allow_calls, "parallel": spec.parallel, "max_whitespace": spec.max_whitespace,
            "text_schema_json": spec.text_schema_json,
            "reasoning": dataclasses.asdict(spec.reasoning) if spec.reasoning is not None else None}


def spec_from_payload(payload: dict[str, Any]) -> GrammarSpec:
    shape = dict(payload["shape"])
    shape["special_tokens"] = frozenset(shape.get("special_tokens", ()))
    return GrammarSpec(shape=ToolCallShape(**shape), special_pieces=frozenset(payload["special_pieces"]),
                       tools=tuple(ToolGrammar(name=n, schema_json=s) for n, s in payload["tools"]),
                       allow_text=bool(payload["allow_text"]), allow_calls=bool(payload["allow_calls"]),
                       parallel=bool(payload["parallel"]), max_whitespace=int(payload["max_whitespace"]),
                       text_schema_json=payload.get("text_schema_json"),
                       reasoning=ReasoningSpec(**payload["reasoning"]) if payload.get("reasoning") else None)
