"""vLLM backend: the V1 engine (``AsyncLLM``) behind the same sync ``Backend.generate`` interface.

Why this shape:

- ``ServingCore.run_choice`` (incremental parsing, validation, events) stays the one code path of
  every backend. ``generate`` bridges to an ``AsyncLLM`` that runs on its own event-loop thread
  (``asyncio.run_coroutine_threadsafe`` + a queue) and yields token ids as vLLM streams them; the
  core sizes its worker pool from :attr:`VLLMBackend.max_concurrency`, so concurrent requests
  reach vLLM together and are batched there.
- The grammar is the one the core builds for every backend; :meth:`VLLMBackend.constraint_engine`
  wraps the engine (:mod:`serve.constraints.remote_grammar`) so that each request carries it in the
  form its route needs:

  * ``llguidance`` -> vLLM's ``guidance`` structured-output backend, fed the Lark grammar
    (``StructuredOutputsParams(grammar=...)``). The mask is computed by vLLM, batched and overlapped
    with the forward pass, which is why this route is preferred. The server still checks: every
    token vLLM returns goes through :meth:`serve.backends.decode_row.DecodeRow.take` with a local
    llguidance matcher of the same grammar (a rejected token or an end before the grammar accepts
    fails the request, naming vLLM), and the core validates every call against its JSON schema.
  * ``lm-format-enforcer`` -> the batch-level logits processor of
    :mod:`serve.backends.vllm_lmfe_processor`, which compiles the grammar description sent in
    ``SamplingParams.extra_args`` inside the engine process.

vLLM starts its engine process with ``spawn``: a script that builds :class:`VLLMBackend` itself needs
the ``if __name__ == "__main__":`` guard (``python -m serve`` has it).

vLLM is imported lazily: without it installed, ``--backend vllm`` exits with a clear message, and
this module (the request mapping, the token bridge) and the two above import and are unit-tested
without vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serve.backends.base import Backend, GenerationState, SamplingParams
from serve.backends.decode_row import GREEDY_BELOW, DecodeRow
from serve.backends.vllm_lmfe_processor import EXTRA_ARGS_KEY, LMFEToolCallLogitsProcessor
from serve.constraints.base import ConstraintEngine, Matcher
from serve.constraints.remote_grammar import RemoteGrammarEngine, RemoteMatcher, spec_to_payload

log = logging.getLogger(__name__)

# vLLM seeds a torch generator per request; torch takes 64-bit seeds, the API allows negative ones.
_SEED_MODULUS = 2 ** 63
_MIN_TOP_P = 1e-6  # a top_p below float32's range would drop every token inside vLLM's sampler

# Two steps on GPU: vllm 0.32 declares llguidance<1.8, the project needs >=1.9 (the whitespace cap of
# the grammar's JSON rules), so one resolver run over both refuses; vLLM runs fine with 1.9.
VLLM_MISSING = ("--backend vllm needs vLLM, which is not installed in this environment. On a GPU machine: "
                "make setup-gpu; on CPU: bash scripts/vllm_venv.sh, then run "
                ".venv-vllm/bin/python -m serve --backend vllm ...")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------ the request sent to vLLM (no vLLM needed)


def request_options(params: SamplingParams, matcher: Matcher | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one choice (plain data; no vLLM import).

    ``structured_grammar`` (popped by the backend into ``StructuredOutputsParams``) carries the
    Lark grammar on the llguidance route; ``extra_args`` carries the grammar description on the
    lm-format-enforcer route.
    """
    temperature = 0.0 if params.temperature <= GREEDY_BELOW else params.temperature
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
        # vLLM also ends on the model's eos unless told otherwise: never let it leak into the text.
        row = DecodeRow(params, local, cancel, state, stop_token_ids=set(params.stop_token_ids) | self._eos_ids,
                        sampler="vLLM")
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
        engine_done = False  # vLLM has finished the request on its own; nothing to abort
        try:
            while True:
                try:
                    item = out.get(timeout=0.05)
                except queue.Empty:
                    if row.cancelled():
                        return
                    continue
                if item is _DONE:
                    engine_done = True
                    state.finish_reason = state.finish_reason or ("cancelled" if cancel.is_set() else "length")
                    return
                if isinstance(item, BaseException):
                    engine_done = True
                    row.end("error", f"vLLM failed: {type(item).__name__}: {item}")
                    return
                completion = item.outputs[0]
                engine_done = bool(item.finished)
                for token in completion.token_ids:
                    if not row.take(token):  # a stop token or a token the grammar rejects
                        return
                    yield token
                    if row.cancelled() or row.ends_after_token():
                        return
                if item.finished:
                    # A stop token ends the loop above; what is left is the length cap (or an abort).
                    reason = {"abort": "cancelled", "stop": "stop"}.get(completion.finish_reason or "", "length")
                    if reason == "stop" and local is not None and not local.is_accepting():
                        row.end("error", "vLLM stopped before the grammar was complete")
                    else:
                        row.end(reason)
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


__all__ = ["VLLMBackend", "VLLM_MISSING", "request_options", "vllm_available"]
