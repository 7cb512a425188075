"""lm-format-enforcer inside vLLM: a batch-level custom logits processor (vLLM V1 has no per-request ones).

vLLM's own ``lm-format-enforcer`` structured-output backend only knows JSON schema, regex and choice,
not the decision / names / parallel calls of the project's grammar, so this processor runs the
project's lm-format-enforcer grammar per request. The engine runs in another process: a request
carries the grammar description in ``SamplingParams.extra_args[EXTRA_ARGS_KEY]`` (see
:func:`serve.backends.vllm_backend.request_options`), and the processor compiles it there (cached
per grammar). It is registered through ``AsyncEngineArgs(logits_processors=...)``.

Importable without vLLM: only the base class comes from vLLM; the per-request part is plain Python
and unit-tested with fake batches.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from serve.constraints.base import Matcher
from serve.constraints.remote_grammar import spec_from_payload

# Key of the grammar description in ``SamplingParams.extra_args``.
EXTRA_ARGS_KEY = "octupus_lmfe_grammar"

try:  # the per-request part below is plain Python; only the registration needs vLLM
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor as _AdapterBase
except ImportError:  # vLLM not installed: the class stays importable for unit tests
    class _AdapterBase:  # type: ignore[no-redef]
        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
            pass


class LMFERequestMask:
    """One request's lm-format-enforcer mask: ``(output_ids, logits_row) -> logits_row``.

    ``output_ids`` is vLLM's live list of the request's generated ids; new ones are fed to the
    matcher before the next mask. A stop token in the output ends the work (vLLM finishes the
    request on it).
    """

    def __init__(self, matcher: Matcher, stop_token_ids: list[int]) -> None:
        self.matcher = matcher
        self.stop = set(stop_token_ids)
        self.seen = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        for token in output_ids[self.seen:]:
            self.seen += 1
            if token not in self.stop:
                self.matcher.consume(token)
        self.matcher.apply(logits)
        if not torch.isfinite(logits).any() and self.stop:
            # Nothing allowed (a dead end of the enforcer): end the turn rather than sample
            # garbage; the server's validation then reports the incomplete call.
            logits[min(self.stop)] = 0.0
        return logits


class LMFEToolCallLogitsProcessor(_AdapterBase):
    """vLLM V1 batch-level logits processor running this project's lm-format-enforcer grammar.

    Requests opt in through ``SamplingParams.extra_args[EXTRA_ARGS_KEY]`` (see
    :func:`request_options`); others pass untouched. Tokenizer data is prepared once per process
    and stop-token set, grammars are compiled once per spec (the engine's LRU cache).
    """

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        model_config = getattr(vllm_config, "model_config", None)
        self._tokenizer_path = getattr(model_config, "tokenizer", None) if model_config is not None else None
        self._vocab_size = model_config.get_vocab_size() if model_config is not None else None
        self._tokenizer: Any = None
        self._engines: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def is_argmax_invariant(self) -> bool:
        return False  # it masks tokens: greedy decoding must see it too

    def _engine(self, stop_token_ids: list[int], special_tokens: list[str]) -> Any:
        from serve.constraints.lmfe_engine import LMFormatEnforcerEngine

        key = (tuple(stop_token_ids), tuple(special_tokens))
        with self._lock:
            if key not in self._engines:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
                vocab = self._vocab_size or len(self._tokenizer)
                self._engines[key] = LMFormatEnforcerEngine(self._tokenizer, vocab, list(stop_token_ids),
                                                            special_tokens=frozenset(special_tokens))
            return self._engines[key]

    def new_req_logits_processor(self, params: Any) -> LMFERequestMask | None:
        payload = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARGS_KEY)
        if not payload:
            return None
        engine = self._engine(payload["stop_token_ids"], payload["special_tokens"])
        compiled = engine.compile(spec_from_payload(payload["spec"]))
        return LMFERequestMask(engine.matcher(compiled), payload["stop_token_ids"])
