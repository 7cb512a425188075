"""Prompt-prefix KV reuse for the transformers backends.

On a CPU, prefill is most of a request's cost (SmolLM2-135M prefills ~200 tokens/s on one core,
and decodes one token per forward pass), and agent-style traffic repeats itself: every step of a
multi-turn conversation re-sends the whole conversation so far plus a little more (BFCL's
multi-turn cases carry 4,000+ tokens of tools and history at every step). This keeps the KV cache
of recent prompts and, when a new prompt starts with a cached one's tokens, copies those
positions and prefills only the rest.

Kept per entry: the prompt's token ids and, per layer, its keys and values ``[1, kv_heads, len,
head_dim]`` (a private copy: the running batch's cache is padded and reshaped freely). Entries are
evicted least recently used once their bytes exceed the budget; an entry whose tokens are a prefix
of a newer entry's is dropped as the newer one is stored (the newer one serves every request the
older one could). Only full-attention layers can be reused position by position: a model with any
other cache layer (sliding window, linear attention) gets no prefix reuse.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache


@dataclass
class _Entry:
    tokens: np.ndarray  # int64 ids of the prompt
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    nbytes: int


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    """LRU store of prompt KV caches, looked up by longest common token prefix."""

    def __init__(self, max_bytes: int, min_tokens: int = 32) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        # Shorter matches are not worth a copy (and every prompt shares a few template tokens).
        self.min_tokens = min_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._bytes = 0
        self._lock = threading.Lock()
        # Counters for /metrics and the evaluation log.
        self.lookups = 0
        self.hits = 0
        self.reused_tokens = 0
        self.prefilled_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt_ids: list[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """The longest cached prefix usable for ``prompt_ids``: (length, keys, values) per layer.

        At least one prompt token is always left to prefill (its logits start the generation), so
        the length is at most ``len(prompt_ids) - 1``; 0 with empty lists when nothing fits.
        """
        if not self.enabled:
            self.prefilled_tokens += len(prompt_ids)
            return 0, [], []
        tokens = np.asarray(prompt_ids, dtype=np.int64)
        with self._lock:
            self.lookups += 1
            best_key, best_len = None, 0
            for key, entry in self._entries.items():
                length = common_prefix(entry.tokens, tokens)
                if length > best_len:
                    best_key, best_len = key, length
            best_len = min(best_len, len(prompt_ids) - 1)
            if best_key is None or best_len < self.min_tokens:
                self.prefilled_tokens += len(prompt_ids)
                return 0, [], []
            entry = self._entries[best_key]
            self._entries.move_to_end(best_key)
            self.hits += 1
            self.reused_tokens += best_len
            self.prefilled_tokens += len(prompt_ids) - best_len
            return (best_len, [k[:, :, :best_len] for k in entry.keys],
                    [v[:, :, :best_len] for v in entry.values])

    def store(self, prompt_ids: list[int], cache: DynamicCache) -> None:
        """Keep a copy of the first ``len(prompt_ids)`` positions of a one-row ``cache``."""
        if not self.enabled or len(prompt_ids) < self.min_tokens:
            return
        length = len(prompt_ids)
        keys = [layer.keys[:, :, :length].clone() for layer in cache.layers]
        values = [layer.values[:, :, :length].clone() for layer in cache.layers]
        nbytes = sum(t.numel() * t.element_size() for t in keys + values)
        if nbytes > self.max_bytes:
            return
        tokens = np.asarray(prompt_ids, dtype=np.int64)
        with self._lock:
            # Older entries this one extends (or repeats) are redundant now.
            for key in [k for k, e in self._entries.items()
                        if len(e.tokens) <= length and common_prefix(e.tokens, tokens) == len(e.tokens)]:
                self._bytes -= self._entries.pop(key).nbytes
            self._entries[self._next] = _Entry(tokens, keys, values, nbytes)
            self._next += 1
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
