"""transformers backend: a KV-cached decode loop with the grammar as a LogitsProcessor.

The loop is written out (rather than calling ``model.generate``) so that it can yield each token
as it is produced (streaming without a streamer thread), stop on client disconnect, on the
grammar's end, or on a repetition loop, and count tokens exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, LogitsProcessor
from transformers.cache_utils import DynamicLayer

from serve.backends.base import Backend, GenerationState, SamplingParams, repeats_cycle
from serve.backends.prefix_cache import PrefixCache, reusable, seed_cache
from serve.constraints.base import Matcher

log = logging.getLogger(__name__)


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token the grammar forbids.

    It advances the matcher itself from ``input_ids`` (tokens after the prompt it has not seen),
    so it works both in this backend's loop and as a ``logits_processor`` of ``model.generate``.
    """

    def __init__(self, matcher: Matcher, prompt_len: int, state: GenerationState | None = None) -> None:
        self.matcher = matcher
        self.consumed = prompt_len
        self.state = state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for token in input_ids[0, self.consumed:].tolist():
            self.advance(token)
        self.mask(scores[0])
        return scores

    def advance(self, token: int) -> None:
        start = time.perf_counter()
        self.consumed += 1
        if not self.matcher.consume(token):
            raise RuntimeError(f"the grammar rejected token {token}")
        if self.state is not None:
            self.state.constraint_seconds[-1] += time.perf_counter() - start

    def mask(self, logits: torch.Tensor) -> None:
        start = time.perf_counter()
        self.matcher.apply(logits)
        if self.state is not None:
            self.state.constraint_seconds.append(time.perf_counter() - start)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends in place into spare capacity.

    DynamicLayer appends with ``torch.cat``, copying the layer's whole cache at every decode step:
    O(context) bytes per token (for 8 batched rows of 1,500 tokens on SmolLM2-135M, about as much
    memory traffic per step as reading the weights). Here the cache lives in a buffer with
    headroom, and ``keys``/``values`` are views of its filled part. Code that replaces ``keys`` or
    ``values`` (cropping, row selection, the batched backend's padding) is detected by identity
    and adopted into a fresh buffer at the next update.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        length = keys.shape[-2] if keys.dim() == 4 else 0
        need = length + key_states.shape[-2]
        buf_k: torch.Tensor | None = getattr(self, "_buf_k", None)
        if (buf_k is None or getattr(self, "_view_k", None) is not keys or need > buf_k.shape[-2]
                or buf_k.shape[:2] != key_states.shape[:2]):
            capacity = need + max(256, need // 4)
            shape = (*key_states.shape[:2], capacity, key_states.shape[-1])
            buf_k, buf_v = key_states.new_empty(shape), value_states.new_empty(shape)
            if length:
                buf_k[:, :, :length] = keys
                buf_v[:, :, :length] = values
            self._buf_k, self._buf_v = buf_k, buf_v
        self._buf_k[:, :, length:need] = key_states
        self._buf_v[:, :, length:need] = value_states
        self.keys, self.values = self._buf_k[:, :, :need], self._buf_v[:, :, :need]
        self._view_k = self.keys
        return self.keys, self.values


def new_cache(config: Any) -> DynamicCache:
    """A DynamicCache whose full-attention layers append in place (sliding-window layers unchanged)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def seeded_generator(params: SamplingParams) -> torch.Generator:
    """The request's sampling RNG: seeded when the request gives a seed, else from the OS."""
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature <= 1e-5:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
        drop = cumulative - sorted_probs >= params.top_p
        # Explicitly, because a top_p below float32's range (e.g. 5e-324) rounds to 0 and drops every token.
        drop[0] = False
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _model_files(model_dir: Path) -> dict[str, Any]:
    """Loading arguments for a saved model folder, or for a folder holding one GGUF file."""
    if (model_dir / "config.json").is_file():
        return {}
    ggufs = sorted(model_dir.glob("*.gguf"))
    if len(ggufs) == 1:
        return {"gguf_file": ggufs[0].name}
    raise FileNotFoundError(f"{model_dir}: no config.json and not exactly one .gguf file")


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model_dir: str | Path, dtype: str = "auto", device: str | None = None,
                 max_context: int | None = None, threads: int | None = None, prefix_cache_mb: float = 0) -> None:
        model_dir = Path(model_dir)
        if threads:
            torch.set_num_threads(threads)
        extra = _model_files(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype: Any = dtype
        if dtype == "auto":
            torch_dtype = torch.float32 if self.device.type == "cpu" else "auto"
        elif isinstance(dtype, str):
            torch_dtype = getattr(torch, dtype)
        start = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, **extra)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **extra).to(self.device)
        self.model.eval()
        cfg = self.model.config
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.max_context = int(max_context or getattr(cfg, "max_position_embeddings", 0) or 4096)
        self.prefix_cache = self._make_prefix_cache(prefix_cache_mb)
        log.info("loaded %s in %.1fs (%s, vocab rows %d, tokenizer %d, context %d)", model_dir,
                 time.perf_counter() - start, torch_dtype, self.vocab_size, len(self.tokenizer), self.max_context)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, max_context: int | None = None,
                   prefix_cache_mb: float = 0) -> "TransformersBackend":
        """Wrap an already loaded model (tests, benchmarks)."""
        self = cls.__new__(cls)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(max_context or getattr(model.config, "max_position_embeddings", 0) or 4096)
        self.prefix_cache = self._make_prefix_cache(prefix_cache_mb)
        return self

    def _make_prefix_cache(self, megabytes: float) -> PrefixCache:
        if megabytes and not reusable(new_cache(self.model.config)):
            log.warning("prefix cache off: this model's cache has layers that do not keep every position")
            megabytes = 0
        return PrefixCache(int(megabytes * 2**20))

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """A one-row cache holding ``prompt_ids`` and the logits of its last position.

        Starts from the longest cached prefix of the prompt (the prefix cache) and keeps the
        prompt's KV for later requests.
        """
        cache = new_cache(self.model.config)
        reused, keys, values = self.prefix_cache.lookup(prompt_ids)
        if reused:
            seed_cache(cache, keys, values)
        ids = torch.tensor([prompt_ids[reused:]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.prefix_cache.store(prompt_ids, cache)
        return cache, out.logits[:, -1, :].float()

    def generate(self, prompt_ids: list[int], params: SamplingParams, matcher: Matcher | None,
                 cancel: threading.Event, state: GenerationState) -> Iterator[int]:
        generator = seeded_generator(params)
        processor = GrammarLogitsProcessor(matcher, len(prompt_ids), state) if matcher is not None else None
        stop_ids = set(params.stop_token_ids)
        generated: list[int] = []
        cache, logits = self.prefill(prompt_ids)
        with torch.inference_mode():
            while True:
                if cancel.is_set():
                    state.finish_reason = "cancelled"
                    return
                if len(generated) >= params.max_tokens:
                    state.finish_reason = "length"
                    return
                if matcher is not None and matcher.is_finished():
                    # Only the end-of-turn token is left; no forward pass needed to emit it.
                    state.completion_tokens += 1
                    state.finish_reason = "stop"
                    return
                logits = logits[0]
                if processor is not None:
                    processor.mask(logits)
                    if not torch.isfinite(logits).any():
                        state.error = "the grammar left no token allowed"
                        state.finish_reason = "error"
                        return
                token = _sample(logits, params, generator)
                state.completion_tokens += 1
                if token in stop_ids:
                    state.finish_reason = "stop"
                    return
                generated.append(token)
                if processor is not None:
                    try:
                        processor.advance(token)
                    except RuntimeError as exc:
                        state.error = str(exc)
                        state.finish_reason = "error"
                        return
                yield token
                if repeats_cycle(generated, params.repetition_window):
                    state.finish_reason = "repetition"
                    return
                if len(generated) >= params.max_tokens:
                    state.finish_reason = "length"
                    return
                out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache,
                                 use_cache=True)
                logits = out.logits[:, -1, :].float()

    def bare_generate(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      min_new_tokens=max_tokens, do_sample=False)
        return out[0, len(prompt_ids):].tolist()
