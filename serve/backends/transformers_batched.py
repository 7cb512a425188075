"""transformers backend with continuous batching: concurrent requests share one decode step.

One engine thread owns the model. Requests queue up; at every step boundary the engine admits
waiting ones (each prompt prefilled on its own, then its KV cache left-padded into the batch), runs
one forward pass for all running sequences, and hands each its next token. A finished, cancelled
or abandoned sequence leaves the batch at once, and its slot goes to the next request.

Why: on a small model a CPU decode step is dominated by per-layer overhead, not by the batch size,
so eight sequences cost little more per step than one (``python -m bench serve`` measures it). Each
row follows the same per-token rules as :class:`TransformersBackend`'s loop
(:class:`serve.backends.decode_row.DecodeRow`: grammar masking, sampling, stop, length, repetition
and cancellation, in the same order), so a request gets the same answer whether it ran alone or
batched, up to float rounding of padded batched matmuls.

Left padding: rows of different lengths are aligned on the right; padded positions are masked out
of attention and each row's position ids count only its own tokens, so RoPE sees the positions the
row would have alone. Leading columns that no row uses any more are dropped as rows leave.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from serve.backends.attention import use_grouped_decode
from serve.backends.engine_thread import EngineThread, QueuedSequence
from serve.backends.transformers_backend import TransformersBackend

log = logging.getLogger(__name__)


class BatchedTransformersBackend(EngineThread, TransformersBackend):
    """Continuous batching over :class:`TransformersBackend`'s model, with the same per-token rules."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, dtype: str = "auto", device: str | None = None,
                 max_context: int | None = None, threads: int | None = None, max_batch: int = 8,
                 max_batch_tokens: int = 32768, prefix_cache_mb: float = 0) -> None:
        super().__init__(model_dir, dtype=dtype, device=device, max_context=max_context, threads=threads,
                         prefix_cache_mb=prefix_cache_mb)
        self._init_engine(max_batch, max_batch_tokens)

    @classmethod
    def from_model(cls, model, tokenizer, max_context: int | None = None, max_batch: int = 8,  # type: ignore[override]
                   max_batch_tokens: int = 32768, prefix_cache_mb: float = 0) -> BatchedTransformersBackend:
        self = super().from_model(model, tokenizer, max_context=max_context, prefix_cache_mb=prefix_cache_mb)
        assert isinstance(self, BatchedTransformersBackend)
        self._init_engine(max_batch, max_batch_tokens)
        return self

    def _init_engine(self, max_batch: int, max_batch_tokens: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        # Padded rows need an attention mask, and with a mask transformers' SDPA copies the KV
        # cache for grouped-query heads at every step; this path does not (serve/backends/attention.py).
        self.grouped_decode = use_grouped_decode(self.model)
        # Padded KV positions the batch may hold (rows x longest row): bounds memory when a long
        # prompt joins short ones. A request that alone exceeds it still runs, just not batched.
        self.max_batch_tokens = max_batch_tokens
        self.max_concurrency = max_batch
        self._init_queue()
        self.steps = 0  # decode steps run (a step advances every running row by one token)
        self.max_rows_seen = 0

    # ------------------------------------------------------------------ engine thread

    def _engine(self) -> None:
        rows: list[QueuedSequence] = []
        cache: DynamicCache | None = None
        mask: torch.Tensor | None = None  # [rows, columns] 1 = a real token, 0 = left padding
        logits: torch.Tensor | None = None  # [rows, vocab] next-token logits of each row
        while True:
            try:
                if not rows:
                    seq = self._next_waiting(block=True)  # idle: block until a request comes
                    rows, cache, mask, logits = self._admit([], None, None, None, seq)
                rows, cache, mask, logits = self._admit_waiting(rows, cache, mask, logits)
                if not rows:
                    continue
                self.max_rows_seen = max(self.max_rows_seen, len(rows))
                tokens = [self._choose(seq, logits[i]) for i, seq in enumerate(rows)]
                keep = [i for i, t in enumerate(tokens) if t is not None]
                for i, seq in enumerate(rows):
                    if tokens[i] is None:
                        seq.finish()
                if not keep:
                    rows, cache, mask, logits = [], None, None, None
                    continue
                if len(keep) < len(rows):
                    rows, cache, mask = self._select(rows, cache, mask, keep)
                    tokens = [tokens[i] for i in keep]
                logits, mask = self._step(rows, cache, mask, tokens)  # type: ignore[arg-type]
                self.steps += 1
            except Exception as exc:  # a failed forward pass fails the running requests, not the server
                log.exception("batch step failed")
                for seq in rows:
                    seq.fail(f"generation failed: {exc}")
                rows, cache, mask, logits = [], None, None, None

    def _admit_waiting(self, rows, cache, mask, logits):
        while len(rows) < self.max_batch:
            seq = self._next_waiting(block=False)
            if seq is None:
                break
            if seq.drop_if_gone():
                continue
            columns = max(mask.shape[1] if mask is not None else 0, len(seq.prompt_ids))
            if rows and (len(rows) + 1) * columns > self.max_batch_tokens:
                self._held = seq
                break  # wait for rows to leave
            rows, cache, mask, logits = self._admit(rows, cache, mask, logits, seq)
        return rows, cache, mask, logits

    @torch.inference_mode()
    def _admit(self, rows, cache, mask, logits, seq: QueuedSequence):
        """Prefill ``seq`` alone (from the prefix cache when it can), then join its cache to the batch's,
        left-padding the shorter side."""
        if seq.drop_if_gone():
            return rows, cache, mask, logits
        own, new_logits = self.prefill(seq.prompt_ids)
        length = len(seq.prompt_ids)
        new_mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        if not rows:
            return [seq], own, new_mask, new_logits
        width = mask.shape[1]
        if length < width:
            _pad_left(own, width - length)
            new_mask = torch.cat([torch.zeros((1, width - length), dtype=torch.long, device=self.device), new_mask], 1)
        elif length > width:
            _pad_left(cache, length - width)
            mask = torch.cat([torch.zeros((mask.shape[0], length - width), dtype=torch.long, device=self.device),
                              mask], 1)
        for layer, new in zip(cache.layers, own.layers, strict=True):
            layer.keys = torch.cat([layer.keys, new.keys], 0)
            layer.values = torch.cat([layer.values, new.values], 0)
        return rows + [seq], cache, torch.cat([mask, new_mask], 0), torch.cat([logits, new_logits], 0)

    def _choose(self, seq: QueuedSequence, row_logits: torch.Tensor) -> int | None:
        """The row's next token (handed to its consumer), or None when the row ends here."""
        # A copy: the batch's logits are inference tensors, which the grammar mask cannot write in place here.
        token = seq.row.next_token(row_logits.clone())
        if token is None:
            return None
        seq.out.put(token)
        return None if seq.row.ends_after_token() else token

    def _select(self, rows, cache, mask, keep: list[int]):
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = mask.index_select(0, index)
        # Columns that only the departed rows used are padding for everyone left: drop them.
        used = mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]
        return [rows[i] for i in keep], cache, mask[:, first:]

    @torch.inference_mode()
    def _step(self, rows, cache, mask, tokens: list[int]):
        start = time.perf_counter()
        ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.device)
        positions = torch.tensor([[seq.position] for seq in rows], dtype=torch.long, device=self.device)
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], 1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        for seq in rows:
            seq.position += 1
        logits = out.logits[:, -1, :].float()
        self.engine_time.add_step(self.since(start), len(rows))
        return logits, mask


def _pad_left(cache: DynamicCache, columns: int) -> None:
    for layer in cache.layers:
        pad_shape = (*layer.keys.shape[:2], columns, layer.keys.shape[3])
        layer.keys = torch.cat([layer.keys.new_zeros(pad_shape), layer.keys], 2)
        layer.values = torch.cat([layer.values.new_zeros(pad_shape), layer.values], 2)
