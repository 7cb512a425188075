"""llama.cpp backend: llama.cpp runs the model from a GGUF file; this server keeps everything else.

llama.cpp (through llama-cpp-python's bindings to its C API) does the forward passes on the GGUF
weights — the format users load into llama.cpp, Ollama and LM Studio, unquantized or quantized.
The prompt is still rendered by the model folder's tokenizer and template, and each token goes
through :class:`serve.backends.decode_row.DecodeRow` as in the transformers backends: the
grammar's mask is written into llama.cpp's logits before the token is chosen, the token is
sampled here (greedy, or temperature / top-p with the request's seeded generator), and every call
is validated again by the core. So the guarantees are the transformers backend's; only the
numbers the model computes come from another engine (and, quantized, from other weights).

One sequence at a time (like ``--max-batch 1``); the context keeps the last request's tokens, and
a prompt that starts with them (the next step of a multi-turn conversation) evaluates only the
rest. Install: ``make llamacpp-venv`` builds llama-cpp-python; ``make gguf`` converts a model folder.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from serve.backends.base import Backend, EngineTime, GenerationState, SamplingParams
from serve.backends.decode_row import DecodeRow
from serve.constraints.base import Matcher

log = logging.getLogger(__name__)

LLAMACPP_MISSING = ("the llamacpp backend needs llama-cpp-python (`make llamacpp-venv` builds it; or "
                    "`pip install llama-cpp-python`)")
# Text whose tokens must agree between the folder's tokenizer and the GGUF's (special tokens included).
PROBE = 'Weather in Paris? {"city": "Paris", "unit": "celsius"} 12.5°C, 東京\n\n'


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def find_gguf(model_dir: Path, gguf: str | Path | None) -> Path:
    """``gguf`` if given, else the one ``.gguf`` file in ``model_dir``."""
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise FileNotFoundError(f"--gguf {path}: no such file")
        return path
    found = sorted(model_dir.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"{model_dir}: {len(found)} .gguf files; name the weights with --gguf "
                                "(`make gguf MODEL=...` converts a model folder)")
    return found[0]


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, model_dir: str | Path, gguf: str | Path | None = None, max_context: int | None = None,
                 threads: int | None = None) -> None:
        import llama_cpp

        model_dir = Path(model_dir)
        path = find_gguf(model_dir, gguf)
        start = time.perf_counter()
        # The folder's tokenizer and template; a folder holding only the GGUF reads them from it.
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file() or (model_dir / "tokenizer.json").is_file()
        self.tokenizer = (AutoTokenizer.from_pretrained(model_dir) if has_tokenizer
                          else AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
        threads = threads or os.cpu_count() or 1
        if not max_context:  # the trained context from the file's metadata, at most 8192 (KV memory)
            meta = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False).metadata
            trained = next((int(v) for k, v in meta.items() if k.endswith(".context_length")), 4096)
            max_context = min(trained, 8192)
        context = int(max_context)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=min(context, 512),
                                   n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
        self.vocab_size = int(self.llm.n_vocab())
        self.max_context = int(self.llm.n_ctx())
        self._check_tokenizer()
        self._lock = threading.Lock()
        self.engine_time = EngineTime()
        self._view: torch.Tensor | None = None
        self._view_address: int | None = None
        log.info("llama.cpp %s: loaded %s in %.1fs (vocab %d, tokenizer %d, context %d, %d threads)",
                 getattr(llama_cpp, "__version__", "?"), path, time.perf_counter() - start, self.vocab_size,
                 len(self.tokenizer), self.max_context, threads)

    def _check_tokenizer(self) -> None:
        """The folder's tokenizer renders and counts the prompt; the GGUF's must give the same ids."""
        specials = list(getattr(self.tokenizer, "all_special_tokens", []))[:4]
        text = "".join(specials) + PROBE
        ours = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if ours != list(theirs):
            raise ValueError(f"the GGUF's tokenizer does not match the model folder's ({len(theirs)} vs {len(ours)} "
                             "tokens for the same text): convert the GGUF from this folder (`make gguf`)")
        if len(self.tokenizer) > self.vocab_size:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens, the GGUF's output layer "
                             f"{self.vocab_size}")

    def _logits(self) -> torch.Tensor:
        """The last evaluated position's logits, in llama.cpp's own buffer (masked in place). The view
        is kept while llama.cpp keeps the buffer (making one costs about 0.1 ms)."""
        pointer = self.llm._ctx.get_logits_ith(-1)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if address != self._view_address:
            self._view = torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)))
            self._view_address = address
        return self._view

    def _prefill(self, prompt_ids: list[int]) -> None:
        """Evaluate the prompt, reusing the context's longest common prefix (at least one token is new,
        so its logits are fresh)."""
        held = self.llm.input_ids[: self.llm.n_tokens].tolist()
        limit = min(len(held), len(prompt_ids) - 1)
        same = 0
        while same < limit and held[same] == prompt_ids[same]:
            same += 1
        self.llm.n_tokens = same  # llama-cpp-python's next evaluation drops the KV past n_tokens
        start = time.perf_counter()
        self.llm.eval(prompt_ids[same:])
        self.engine_time.add_prefill(time.perf_counter() - start)

    def generate(self, prompt_ids: list[int], params: SamplingParams, matcher: Matcher | None,
                 cancel: threading.Event, state: GenerationState) -> Iterator[int]:
        row = DecodeRow(params, matcher, cancel, state)
        with self._lock:
            self._prefill(prompt_ids)
            while True:
                token = row.next_token(self._logits())
                if token is None:
                    return
                yield token
                if row.ends_after_token():
                    return
                start = time.perf_counter()
                self.llm.eval([token])
                self.engine_time.add_step(time.perf_counter() - start)

    def bare_generate(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """llama.cpp's own greedy loop (its sampler), for benchmarking against :meth:`generate`."""
        with self._lock:
            self.llm.reset()
            out = []
            for token in self.llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True):
                out.append(int(token))
                if len(out) >= max_tokens:
                    break
            return out

    def close(self) -> None:
        llm: Any = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
