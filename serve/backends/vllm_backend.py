"""vLLM backend: the V1 engine (``AsyncLLM``) behind the same sync ``Backend.generate`` interface.

Why this shape:

- ``ServingCore.run_choice`` (incremental parsing, validation, events) stays the one code path of
  both backends. ``generate`` bridges to an ``AsyncLLM`` that runs on its own event-loop thread
  (``asyncio.run_coroutine_threadsafe`` + a queue) and yields token ids as vLLM streams them; the
  core sizes its worker pool from :attr:`VLLMBackend.max_concurrency`, so concurrent requests
  reach vLLM together and are batched there.
- The grammar is the one the core builds for every backend, routed per engine:

  * ``llguidance`` -> vLLM's ``guidance`` structured-output backend, fed the Lark grammar of
    :func:`serve.constraints.llguidance_engine.build_lark` (``StructuredOutputsParams(grammar=...)``).
    The mask is computed by vLLM, batched and overlapped with the forward pass, which is why this
    route is preferred. The server still checks: every token vLLM returns is replayed through a
    local llguidance matcher of the same grammar (a rejected token or an end before the grammar
    accepts fails the request, naming the engine), and the core validates every call against its
    JSON schema after generation.
  * ``lm-format-enforcer`` -> a batch-level custom logits processor
    (:class:`LMFEToolCallLogitsProcessor`, registered through ``AsyncEngineArgs(logits_processors=...)``)
    that runs this project's lm-format-enforcer grammar per request inside the engine process. vLLM's
    own ``lm-format-enforcer`` structured-output backend only knows JSON schema, regex and choice,
    not the decision / names / parallel calls of the full grammar. The engine runs in another
    process, so the request carries the grammar description (not a matcher object) in
    ``SamplingParams.extra_args``; the processor compiles it there (cached per grammar).

vLLM starts its engine process with ``spawn``: a script that builds :class:`VLLMBackend` itself needs
the ``if __name__ == "__main__":`` guard (``python -m serve`` has it).

vLLM is imported lazily: without it installed, ``--backend vllm`` exits with a clear message, and
this module (the grammar routing, the request mapping, the logits processor's per-request part)
imports and is unit-tested without vLLM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serve.backends.base import Backend, GenerationState, SamplingParams, repeats_cycle
from serve.constraints.base import ConstraintEngine, GrammarSpec, Matcher, ToolGrammar
from stages.toolcall_format import ToolCallShape

log = logging.getLogger(__name__)

# Key of the grammar description in ``SamplingParams.extra_args`` (lm-format-enforcer route).
EXTRA_ARGS_KEY = "octupus_lmfe_grammar"
# vLLM seeds a torch generator per request; torch takes 64-bit seeds, the API allows negative ones.
_SEED_MODULUS = 2 ** 63
_GREEDY_BELOW = 1e-5  # the transformers backend's threshold for greedy decoding
_MIN_TOP_P = 1e-6  # a top_p below float32's range would drop every token inside vLLM's sampler

# Two steps on GPU: vllm 0.32 declares llguidance<1.8, the project needs >=1.9 (the whitespace cap of
# the grammar's JSON rules), so one resolver run over both refuses; vLLM runs fine with 1.9.
VLLM_MISSING = ("--backend vllm needs vLLM, which is not installed in this environment. On a GPU machine: "
                "pip install vllm==0.32.0 && pip install -e .; on CPU: bash scripts/vllm_venv.sh, then run "
                ".venv-vllm/bin/python -m serve --backend vllm ...")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------ grammar routing (no vLLM needed)


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
        super().__init__(inner.tokenizer, inner.vocab_size, inner.stop_token_ids)
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
            "allow_calls": spec.allow_calls, "parallel": spec.parallel, "max_whitespace": spec.max_whitespace}


def spec_from_payload(payload: dict[str, Any]) -> GrammarSpec:
    shape = dict(payload["shape"])
    shape["special_tokens"] = frozenset(shape.get("special_tokens", ()))
    return GrammarSpec(shape=ToolCallShape(**shape), special_pieces=frozenset(payload["special_pieces"]),
                       tools=tuple(ToolGrammar(name=n, schema_json=s) for n, s in payload["tools"]),
                       allow_text=bool(payload["allow_text"]), allow_calls=bool(payload["allow_calls"]),
                       parallel=bool(payload["parallel"]), max_whitespace=int(payload["max_whitespace"]))


def request_options(params: SamplingParams, matcher: Matcher | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one choice (plain data; no vLLM import).

    ``structured_grammar`` (popped by the backend into ``StructuredOutputsParams``) carries the
    Lark grammar on the llguidance route; ``extra_args`` carries the grammar description on the
    lm-format-enforcer route.
    """
    temperature = 0.0 if params.temperature <= _GREEDY_BELOW else params.temperature
    opts: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": temperature,
        "top_p": max(min(params.top_p, 1.0), _MIN_TOP_P),
        "seed": None if params.seed is None else params.seed % _SEED_MODULUS,
        "stop_token_ids": list(params.stop_token_ids),
        # The core decodes the ids itself (incrementally, with its own stop strings); vLLM's
        # detokenizer would only cost CPU.
        "detokenize": False,
        "skip_special_tokens": False,
    }
    if isinstance(matcher, RemoteMatcher):
        grammar = matcher.grammar
        if grammar.lark is not None:
            opts["structured_grammar"] = grammar.lark
        else:
            opts["extra_args"] = {EXTRA_ARGS_KEY: {
                "spec": spec_to_payload(grammar.spec), "stop_token_ids": list(params.stop_token_ids),
                "special_tokens": sorted(grammar.spec.special_pieces)}}
    elif matcher is not None:
        raise TypeError(f"{type(matcher).__name__}: the vLLM backend enforces grammars inside vLLM; wrap the "
                        "engine with VLLMBackend.constraint_engine")
    return opts


# ------------------------------------------------------------------ lm-format-enforcer inside vLLM

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


# ------------------------------------------------------------------ the backend

_DONE = object()


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model_dir: str | Path, *, engine: str = "llguidance", dtype: str = "auto",
                 max_context: int | None = None, tensor_parallel_size: int = 1, max_num_seqs: int = 256,
                 gpu_memory_utilization: float = 0.9, kv_cache_memory_bytes: int | None = None,
                 enforce_eager: bool = False, seed: int = 0) -> None:
        if not vllm_available():
            raise RuntimeError(VLLM_MISSING)
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: the vLLM backend needs a saved transformers model folder "
                                    "(config.json); a GGUF-only folder is served by --backend transformers")
        from transformers import AutoTokenizer
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        self.max_concurrency = max_num_seqs
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._eos_ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        args: dict[str, Any] = dict(
            model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, max_model_len=max_context,
            tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_cache_memory_bytes,
            enforce_eager=enforce_eager, seed=seed, disable_log_stats=True,
            # The Lark grammar (special tokens, %json rules) is llguidance's own format: no fallback
            # to another structured-output backend that would read it differently.
            structured_outputs_config=StructuredOutputsConfig(backend="guidance"),
        )
        if engine == "lm-format-enforcer":
            args["logits_processors"] = [LMFEToolCallLogitsProcessor]
        start = time.perf_counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()

        async def start_engine() -> Any:
            # Created on the loop that will drive it: its output handler and sockets bind to that loop.
            from vllm.v1.engine.async_llm import AsyncLLM

            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        try:
            self.engine = asyncio.run_coroutine_threadsafe(start_engine(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        model_config = self.engine.model_config
        self.max_context = int(model_config.max_model_len)
        self.vocab_size = int(model_config.get_vocab_size())
        route = "logits processor" if engine == "lm-format-enforcer" else "guidance structured outputs"
        log.info("vLLM engine ready in %.1fs (%s, context %d, vocab %d, tp %d, constraint route %s)",
                 time.perf_counter() - start, model_dir, self.max_context, self.vocab_size, tensor_parallel_size, route)

    def constraint_engine(self, engine: ConstraintEngine) -> ConstraintEngine:
        return RemoteGrammarEngine(engine)

    def _sampling_params(self, params: SamplingParams, matcher: Matcher | None) -> Any:
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.sampling_params import SamplingParams as VSamplingParams

        opts = request_options(params, matcher)
        grammar = opts.pop("structured_grammar", None)
        if grammar is not None:
            opts["structured_outputs"] = StructuredOutputsParams(grammar=grammar)
        return VSamplingParams(**opts, output_kind=RequestOutputKind.DELTA)

    @staticmethod
    def _prompt(prompt_ids: list[int]) -> Any:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=list(prompt_ids))

    def generate(self, prompt_ids: list[int], params: SamplingParams, matcher: Matcher | None,
                 cancel: threading.Event, state: GenerationState) -> Iterator[int]:
        try:
            sampling = self._sampling_params(params, matcher)
        except (TypeError, ValueError) as exc:
            state.error, state.finish_reason = f"vLLM refused the request: {exc}", "error"
            return
        local = matcher.local if isinstance(matcher, RemoteMatcher) else None
        request_id = f"octupus-{uuid.uuid4().hex}"
        out: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for item in self.engine.generate(self._prompt(prompt_ids), sampling, request_id):
                    out.put(item)
            except asyncio.CancelledError:  # our own abort: the consumer is gone already
                raise
            except Exception as exc:  # handed to the worker thread instead of dying in the loop
                out.put(exc)
            finally:
                out.put(_DONE)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        # vLLM also ends on the model's eos unless told otherwise: never let it leak into the text.
        stop_ids = set(params.stop_token_ids) | self._eos_ids
        generated: list[int] = []
        engine_done = False  # vLLM has finished the request on its own; nothing to abort
        try:
            while True:
                try:
                    item = out.get(timeout=0.05)
                except queue.Empty:
                    if cancel.is_set():
                        state.finish_reason = "cancelled"
                        return
                    continue
                if item is _DONE:
                    engine_done = True
                    state.finish_reason = state.finish_reason or ("cancelled" if cancel.is_set() else "length")
                    return
                if isinstance(item, BaseException):
                    engine_done = True
                    state.error, state.finish_reason = f"vLLM failed: {type(item).__name__}: {item}", "error"
                    return
                completion = item.outputs[0]
                engine_done = bool(item.finished)
                for token in completion.token_ids:
                    state.completion_tokens += 1
                    if token in stop_ids:
                        if local is not None and not local.is_accepting():
                            state.error = "vLLM ended the turn before the grammar was complete"
                            state.finish_reason = "error"
                        else:
                            state.finish_reason = "stop"
                        return
                    if local is not None:
                        checked = time.perf_counter()
                        accepted = local.consume(token)
                        state.constraint_seconds.append(time.perf_counter() - checked)
                        if not accepted:
                            state.error, state.finish_reason = f"the grammar rejected token {token} from vLLM", "error"
                            return
                    generated.append(token)
                    yield token
                    if cancel.is_set():
                        state.finish_reason = "cancelled"
                        return
                    if repeats_cycle(generated, params.repetition_window):
                        state.finish_reason = "repetition"
                        return
                if item.finished:
                    # A stop token ends the loop above; what is left is the length cap (or an abort).
                    state.finish_reason = {"abort": "cancelled", "stop": "stop"}.get(completion.finish_reason or "",
                                                                                     "length")
                    if state.finish_reason == "stop" and local is not None and not local.is_accepting():
                        state.error, state.finish_reason = "vLLM stopped before the grammar was complete", "error"
                    return
        finally:
            # Client gone, stop string (the core closes this generator), repetition or an error:
            # free vLLM's slot now instead of letting it run to max_tokens.
            if not engine_done:
                future.cancel()
                self._abort(request_id)

    def _abort(self, request_id: str) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.engine.abort(request_id), self._loop)
        except RuntimeError:  # loop already closed at shutdown
            pass

    def bare_generate(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VSamplingParams

        sampling = VSamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, detokenize=False,
                                   output_kind=RequestOutputKind.FINAL_ONLY)

        async def run() -> list[int]:
            ids: list[int] = []
            async for item in self.engine.generate(self._prompt(prompt_ids), sampling, f"bare-{uuid.uuid4().hex}"):
                ids = list(item.outputs[0].token_ids)
            return ids

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            handler = getattr(engine, "output_handler", None)
            if handler is not None:
                # Stopped first, so that it does not report the engine processes' exit as a crash.
                self._loop.call_soon_threadsafe(handler.cancel)
            try:
                engine.shutdown()
            except Exception:  # shutting down anyway
                log.exception("vLLM engine shutdown failed")
        if self._loop.is_running():
            async def drain() -> None:
                # Let vLLM's socket tasks finish cancelling, instead of being destroyed while pending.
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout=10)
            except Exception:  # a task that will not stop must not block the server's exit
                log.warning("vLLM event loop did not drain at shutdown")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


__all__ = ["EXTRA_ARGS_KEY", "LMFERequestMask", "LMFEToolCallLogitsProcessor", "RemoteGrammar", "RemoteGrammarEngine",
           "RemoteMatcher", "VLLMBackend", "VLLM_MISSING", "request_options", "spec_from_payload", "spec_to_payload",
           "vllm_available"]
