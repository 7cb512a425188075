"""transformers backend: one request at a time, a KV-cached decode loop on the caller's thread.

The loop is written out (rather than calling ``model.generate``) so that it can yield each token
as it is produced (streaming without a streamer thread), stop on client disconnect, on the
grammar's end, or on a repetition loop, and count tokens exactly. What happens at each token is
:class:`serve.backends.decode_row.DecodeRow`'s, the same rules as the batched backend's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from serve.backends.base import Backend, EngineTime, GenerationState, SamplingParams
from serve.backends.decode_row import DecodeRow
from serve.backends.kv_cache import new_cache, reusable, seed_cache
from serve.backends.prefix_cache import PrefixCache
from serve.constraints.base import Matcher

log = logging.getLogger(__name__)


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
        self.engine_time = EngineTime()
        log.info("loaded %s in %.1fs (%s, vocab rows %d, tokenizer %d, context %d)", model_dir,
                 time.perf_counter() - start, torch_dtype, self.vocab_size, len(self.tokenizer), self.max_context)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, max_context: int | None = None,
                   prefix_cache_mb: float = 0) -> TransformersBackend:
        """Wrap an already loaded model (tests, benchmarks)."""
        self = cls.__new__(cls)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(max_context or getattr(model.config, "max_position_embeddings", 0) or 4096)
        self.prefix_cache = self._make_prefix_cache(prefix_cache_mb)
        self.engine_time = EngineTime()
        return self

    def _make_prefix_cache(self, megabytes: float) -> PrefixCache:
        if megabytes and not reusable(new_cache(self.model.config)):
            log.warning("prefix cache off: this model's cache has layers that do not keep every position")
            megabytes = 0
        return PrefixCache(int(megabytes * 2**20))

    @torch.inference_mode()
    def since(self, start: float) -> float:
        """Seconds since ``start`` (``time.perf_counter``), for ``engine_time``: on a GPU after its
        queued kernels finished (the sampler would wait for them right after anyway)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def prefill(self, prompt_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """A one-row cache holding ``prompt_ids`` and the logits of its last position.

        Starts from the longest cached prefix of the prompt (the prefix cache) and keeps the
        prompt's KV for later requests.
        """
        start = time.perf_counter()
        cache = new_cache(self.model.config)
        reused, keys, values = self.prefix_cache.lookup(prompt_ids)
        if reused:
            seed_cache(cache, keys, values)
        ids = torch.tensor([prompt_ids[reused:]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.prefix_cache.store(prompt_ids, cache)
        logits = out.logits[:, -1, :].float()
        self.engine_time.add_prefill(self.since(start))
        return cache, logits

    def generate(self, prompt_ids: list[int], params: SamplingParams, matcher: Matcher | None,
                 cancel: threading.Event, state: GenerationState) -> Iterator[int]:
        row = DecodeRow(params, matcher, cancel, state)
        cache, logits = self.prefill(prompt_ids)
        with torch.inference_mode():
            while True:
                token = row.next_token(logits[0])
                if token is None:
                    return
                yield token
                if row.ends_after_token():
                    return
                start = time.perf_counter()
                out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache,
                                 use_cache=True)
                logits = out.logits[:, -1, :].float()
                self.engine_time.add_step(self.since(start))

    def bare_generate(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      min_new_tokens=max_tokens, do_sample=False)
        return out[0, len(prompt_ids):].tolist()
