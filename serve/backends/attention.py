"""Grouped-query attention for batched decoding without copying the KV cache.

transformers' SDPA path repeats every key/value head ``num_key_value_groups`` times (a full copy
of the layer's cache) whenever an attention mask is given, because the CUDA kernels cannot do
masked GQA. The batched backend always passes a mask (its rows are left-padded), so each decode
step copied the whole KV cache once per layer: measured on SmolLM2-135M (3 KV heads for 9 query
heads), 8 rows of 180-1,300 tokens, 2 threads, those copies were 70 % of the step.

For a single query position the copy is avoidable without any kernel support: the ``groups``
query heads that share a KV head become ``groups`` query rows of that KV head, so one ordinary
SDPA call over the un-repeated cache gives the same result. Everything else (prefill, unmasked
calls, models without GQA) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "octupus_grouped_sdpa"


def grouped_decode_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    groups = int(getattr(module, "num_key_value_groups", 1))
    batch, heads, q_len, dim = query.shape
    if q_len != 1 or groups == 1 or attention_mask is None or dropout or key.shape[1] * groups != heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # Query head h reads KV head h // groups (repeat_kv's order): [batch, kv_heads, groups, dim].
    grouped = query.reshape(batch, key.shape[1], groups, dim)
    mask = attention_mask[:, :, -1:, :] if attention_mask.dim() == 4 else attention_mask
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    # Back to transformers' layout: [batch, q_len, heads, dim].
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_grouped_decode(model: Any) -> bool:
    """Switch a model on transformers' SDPA to the grouped decode path; False if it uses another."""
    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    AttentionInterface.register(NAME, grouped_decode_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
