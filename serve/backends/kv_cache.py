"""The KV cache of the transformers backends: full-attention layers that grow in place, and the
helpers the prefix cache uses to seed a new cache with a prompt's cached positions."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


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


def reusable(cache: DynamicCache) -> bool:
    """True when every layer of ``cache`` keeps all positions (plain full attention): only then can
    a prompt's positions be reused for another prompt that starts the same way."""
    return all(type(layer) is GrowingLayer for layer in cache.layers)


def seed_cache(cache: DynamicCache, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Fill an empty cache with a cached prefix (GrowingLayer copies it into its own buffer)."""
    for index, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k, v, index)
