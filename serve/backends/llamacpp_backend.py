"""llama.cpp backend: llama.cpp runs the model from a GGUF file; this server keeps everything else.

llama.cpp (through llama-cpp-python's bindings to its C API) does the forward passes on the GGUF
weights — the format users load into llama.cpp, Ollama and LM Studio, unquantized or quantized.
The prompt is still rendered by the model folder's tokenizer and template, and each token goes
through :class:`serve.backends.decode_row.DecodeRow` as in the transformers backends: the
grammar's mask is written into llama.cpp's logits before the token is chosen, the token is
sampled here (greedy, or temperature / top-p with the request's seeded generator), and every call
is validated again by the core. So the guarantees are the transformers backend's; only the
numbers the model computes come from another engine (and, quantized, from other weights).

Continuous batching over ``max_batch`` sequences (llama.cpp's multi-sequence KV cache, one stream
of ``max_context`` cells per sequence slot). One engine thread runs one ``llama_decode`` a step,
holding the next token of every decoding row and, in the room left under ``n_batch``, the next
chunk of waiting prompts (the last token of a prompt asks for logits, and its row starts decoding).
A slot keeps its tokens after its request ends; a new request takes the free slot whose tokens
share the longest prefix with its prompt and evaluates only the rest, so the next turn of a
conversation (or a request with the same tool list) reuses what the last one computed. Before a
slot gives up a long prompt, its KV state is copied to host memory (``prefix_cache_mb``,
least recently used first out); a request whose prompt shares more with a saved state, or with a
busy slot, than with any free slot gets that state copied into its slot (``llama_state_seq_*``).
Under load, when the one free slot holds another tool list, this is what keeps a request from
prefilling its own from scratch.

Time accounting (``/metrics``): a step that carries prompt tokens counts as prefill, wholly (the
decode rows riding along are a few tokens beside up to ``N_BATCH`` prompt tokens); a step of decode
rows only counts as a decode step of that many rows.

Install: ``make llamacpp-venv`` builds llama-cpp-python; ``make gguf`` converts a model folder.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from serve.backends.base import Backend, EngineTime
from serve.backends.engine_thread import EngineThread, QueuedSequence
from serve.backends.prefix_cache import common_prefix as array_prefix

log = logging.getLogger(__name__)

LLAMACPP_MISSING = ("the llamacpp backend needs llama-cpp-python (`make llamacpp-venv` builds it; or "
                    "`pip install llama-cpp-python`)")
# Text whose tokens must agree between the folder's tokenizer and the GGUF's (special tokens included).
PROBE = 'Weather in Paris? {"city": "Paris", "unit": "celsius"} 12.5°C, 東京\n\n'
# A slot is reused for its shared prefix when that prefix is at least this share of the prompt.
SIMILAR = 0.1
# A slot about to lose at least this many tokens saves its state first (when prefix_cache_mb > 0).
SAVE_TOKENS = 64
N_BATCH = 512  # tokens a step may hold (decode rows + prompt chunks): llama.cpp's default micro-batch
# Most grammar-forced tokens a row feeds in one step beside the token it sampled (0: none). With 8
# rows this stays within N_BATCH with room for prompt chunks.
FAST_FORWARD = 32
KV_PAD = 256  # llama.cpp pads a micro-batch's KV length (its longest stream's used cells) to this


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


@dataclass
class Slot:
    """One llama.cpp sequence: the tokens whose KV it holds, and whether a request is using it."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: int = 0


class SavedPrompts:
    """Sequence states (``llama_state_seq_get_data``) of prompts slots gave up, by their tokens; LRU
    within ``max_bytes``. A state whose tokens start a newer one's is dropped (the newer serves it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], bytearray] = OrderedDict()
        self.bytes = 0
        # What /metrics reports as the backend's prefix cache (slots and saved states together).
        self.lookups = self.hits = self.reused_tokens = self.prefilled_tokens = 0

    @property
    def nbytes(self) -> int:
        return self.bytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def count(self, prompt_tokens: int, reused: int) -> None:
        self.lookups += 1
        self.hits += reused > 0
        self.reused_tokens += reused
        self.prefilled_tokens += prompt_tokens - reused

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: np.ndarray) -> tuple[tuple[int, ...] | None, int]:
        """The saved tokens sharing the longest prefix with ``prompt``, and that length."""
        best, length = None, 0
        for tokens in self._entries:
            shared = array_prefix(np.asarray(tokens), prompt)
            if shared > length:
                best, length = tokens, shared
        return best, length

    def put(self, tokens: tuple[int, ...], state: bytearray) -> None:
        if len(state) > self.max_bytes:
            return
        for old in [t for t in self._entries if len(t) <= len(tokens) and tokens[:len(t)] == t]:
            self.bytes -= len(self._entries.pop(old))
        self._entries[tokens] = state
        self.bytes += len(state)
        while self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped)

    def get(self, tokens: tuple[int, ...]) -> bytearray:
        self._entries.move_to_end(tokens)
        return self._entries[tokens]

    def covers(self, tokens: list[int]) -> bool:
        """Whether a saved state already holds ``tokens`` (or more)."""
        return any(len(t) >= len(tokens) and list(t[:len(tokens)]) == tokens for t in self._entries)


@dataclass
class _Entry:
    """One token of a step's batch: whose it is, and whether its logits are wanted."""

    seq: QueuedSequence
    token: int
    logits: bool
    index: int = -1  # its place in the step's batch (set by the step)


class LlamaCppBackend(EngineThread, Backend):
    name = "llamacpp"

    def __init__(self, model_dir: str | Path, gguf: str | Path | None = None, max_context: int | None = None,
                 threads: int | None = None, max_batch: int = 1, prefix_cache_mb: float = 0,
                 fast_forward: int = FAST_FORWARD) -> None:
        import llama_cpp
        import llama_cpp._logger

        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if fast_forward < 0:
            raise ValueError("fast_forward must be at least 0")
        self.fast_forward = fast_forward
        self._lib = llama_cpp
        model_dir = Path(model_dir)
        path = find_gguf(model_dir, gguf)
        start = time.perf_counter()
        # The folder's tokenizer and template; a folder holding only the GGUF reads them from it.
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file() or (model_dir / "tokenizer.json").is_file()
        self.tokenizer = (AutoTokenizer.from_pretrained(model_dir) if has_tokenizer
                          else AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
        llama_cpp._logger.set_verbose(log.isEnabledFor(logging.DEBUG))
        llama_cpp.llama_backend_init()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not self._model:
            raise ValueError(f"llama.cpp could not load {path}")
        self._ctx = None
        self._batch = None
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        # Each sequence gets the trained context, at most 8192 cells (KV memory), unless told.
        per_sequence = int(max_context or min(int(llama_cpp.llama_model_n_ctx_train(self._model)), 8192))
        threads = threads or os.cpu_count() or 1
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = per_sequence * max_batch
        params.n_seq_max = max_batch
        params.kv_unified = False  # a stream per sequence: each row attends over its own cells only
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_threads = params.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not make a context of {max_batch} x {per_sequence} tokens")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.max_context = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self.max_batch = self.max_concurrency = max_batch
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._check_tokenizer()
        self.slots = [Slot(i) for i in range(max_batch)]
        self.saved = self.prefix_cache = SavedPrompts(int(prefix_cache_mb * 2**20))
        self.copied = 0  # prompts started from another slot's or a saved state
        self.placeholders = 0  # placeholder tokens that kept a step's slots in one micro-batch
        self._clock = 0
        self._decode_lock = threading.Lock()  # the engine's steps and bare_generate share the context
        self.engine_time = EngineTime()
        self.max_rows_seen = 0
        self._init_queue()
        log.info("llama.cpp %s: loaded %s in %.1fs (vocab %d, tokenizer %d, %d sequences x %d tokens, %d threads)",
                 getattr(llama_cpp, "__version__", "?"), path, time.perf_counter() - start, self.vocab_size,
                 len(self.tokenizer), max_batch, self.max_context, threads)

    def tokenize(self, text: str) -> list[int]:
        """The GGUF's own tokenizer (special tokens parsed)."""
        data = text.encode("utf-8")
        room = len(data) + 8
        out = (self._lib.llama_token * room)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), out, room, False, True)
        if n < 0:
            raise ValueError("llama.cpp could not tokenize the probe text")
        return list(out[:n])

    def _check_tokenizer(self) -> None:
        """The folder's tokenizer renders and counts the prompt; the GGUF's must give the same ids."""
        specials = list(getattr(self.tokenizer, "all_special_tokens", []))[:4]
        text = "".join(specials) + PROBE
        ours = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = self.tokenize(text)
        if ours != theirs:
            raise ValueError(f"the GGUF's tokenizer does not match the model folder's ({len(theirs)} vs {len(ours)} "
                             "tokens for the same text): convert the GGUF from this folder (`make gguf`)")
        if len(self.tokenizer) > self.vocab_size:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens, the GGUF's output layer "
                             f"{self.vocab_size}")

    # ------------------------------------------------------------------ the KV cache's slots

    def _take_slot(self, prompt_ids: list[int]) -> tuple[Slot, int] | None:
        """A free slot for the prompt, trimmed to the prefix it shares with it; None when every slot
        is busy. The free slot sharing the longest prefix, if that prefix is at least ``SIMILAR`` of
        the prompt; else the least recently used one (so that a few shared template tokens do not
        evict a cached tool list). When a busy slot or a saved state shares more, its state is
        copied into the slot first. At least one prompt token stays to evaluate, so the prompt's
        last position yields fresh logits."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        limit = len(prompt_ids) - 1
        prompt = np.asarray(prompt_ids)

        shared = {slot.seq_id: min(array_prefix(np.asarray(slot.tokens), prompt), limit) for slot in self.slots}
        best = max(free, key=lambda s: (shared[s.seq_id], -s.last_used))
        if shared[best.seq_id] < SIMILAR * len(prompt_ids):
            best = min(free, key=lambda s: s.last_used)
        same = shared[best.seq_id]
        donor: Slot | tuple[int, ...] | None = None
        donor_same = max(same, math.ceil(SIMILAR * len(prompt_ids)) - 1)
        for slot in self.slots:
            if slot.busy and shared[slot.seq_id] > donor_same:
                donor, donor_same = slot, shared[slot.seq_id]
        if len(self.saved):
            saved, saved_same = self.saved.best(prompt)
            if saved is not None and min(saved_same, limit) > donor_same:
                donor, donor_same = saved, min(saved_same, limit)
        if donor is not None:
            # The donor's state first: saving the slot's own below may evict a saved donor.
            if isinstance(donor, Slot):
                state, tokens = self._state(donor), list(donor.tokens)
            else:
                state, tokens = self.saved.get(donor), list(donor)
            self._save(best, keep=0)
            if state and self._load(best, state, tokens):
                same = donor_same
                self.copied += 1
            else:
                same = 0
        else:
            self._save(best, keep=same)
        if not self._lib.llama_memory_seq_rm(self._memory, best.seq_id, same, -1):
            same = 0  # the cache cannot drop a suffix (not the case for transformer models): start over
            self._lib.llama_memory_seq_rm(self._memory, best.seq_id, -1, -1)
        del best.tokens[same:]
        best.busy = True
        self._clock += 1
        best.last_used = self._clock
        return best, same

    def _state(self, slot: Slot) -> bytearray:
        """The slot's sequence state (its KV cells), as ``llama_state_seq_get_data`` writes it (written
        in place: a state is tens of MB, copied once)."""
        with self._decode_lock:
            size = self._lib.llama_state_seq_get_size(self._ctx, slot.seq_id)
            state = bytearray(size)
            view = (ctypes.c_uint8 * size).from_buffer(state)
            written = self._lib.llama_state_seq_get_data(self._ctx, view, size, slot.seq_id)
        del view  # releases the buffer, so that it can shrink
        del state[written:]
        return state

    def _load(self, slot: Slot, state: bytearray, tokens: list[int]) -> bool:
        view = (ctypes.c_uint8 * len(state)).from_buffer(state)  # read in place
        with self._decode_lock:
            self._lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            ok = self._lib.llama_state_seq_set_data(self._ctx, view, len(state), slot.seq_id) != 0
        del view
        slot.tokens[:] = tokens if ok else []
        return ok

    def _save(self, slot: Slot, keep: int) -> None:
        """Copy the slot's state to host memory if it is about to lose ``SAVE_TOKENS`` or more tokens
        that no saved state holds."""
        if self.saved.max_bytes <= 0 or len(slot.tokens) - keep < SAVE_TOKENS or self.saved.covers(slot.tokens):
            return
        state = self._state(slot)
        if state:
            self.saved.put(tuple(slot.tokens), state)

    def _forget(self, slot: Slot) -> None:
        """Empty the slot: its cells and its tokens (after a failure they may disagree)."""
        self._lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.tokens.clear()

    def _forget_free_slots(self) -> None:
        for slot in self.slots:
            if not slot.busy:
                self._forget(slot)

    def _release(self, seq: QueuedSequence) -> None:
        if seq.slot is not None:
            seq.slot.busy = False
            seq.slot = None

    def reset(self) -> None:
        """Forget every slot's tokens and every saved state (the next prompts are evaluated in full)."""
        with self._decode_lock:
            self._lib.llama_memory_clear(self._memory, True)
            for slot in self.slots:
                slot.tokens.clear()
            self.saved.clear()

    # ------------------------------------------------------------------ engine thread

    def _engine(self) -> None:
        # Decoding rows and the tokens each feeds next: the one it emitted last, then any the grammar forced.
        decoding: list[tuple[QueuedSequence, list[int]]] = []
        prefilling: list[tuple[QueuedSequence, list[int]]] = []  # rows and their prompt tokens not yet evaluated
        while True:
            try:
                if not decoding and not prefilling:
                    seq = self._next_waiting(block=True)
                    self._held = seq
                self._admit(prefilling)
                decoding[:] = [(s, feed) for s, feed in decoding if not self._ended_if_gone(s)]
                prefilling[:] = [(s, rest) for s, rest in prefilling if not self._ended_if_gone(s)]
                # A row feeds all its tokens only when it is the step's one sequence: with a KV stream
                # per sequence, llama.cpp gives each micro-batch the same number of tokens of every
                # sequence in it, so one row's extra tokens would cost a micro-batch (a pass over the
                # weights) of their own. Beside other rows, each feeds one token a step.
                alone = len(decoding) == 1 and not prefilling
                entries, waiting = [], []
                for s, feed in decoding:
                    now, rest = (feed, []) if alone else (feed[:1], feed[1:])
                    entries += [_Entry(s, t, not rest and i == len(now) - 1) for i, t in enumerate(now)]
                    if rest:
                        waiting.append((s, rest))
                decode_rows, decode_tokens, prompts_done = len(decoding), len(entries), 0
                self.engine_time.forced_tokens += decode_tokens - decode_rows  # fed without a step of their own
                # Room for prompt tokens; the idle slots between the step's rows may take a placeholder each.
                room = N_BATCH - decode_tokens - max(0, min(self.max_batch, N_BATCH // 2) - decode_rows)
                while prefilling and room > 0:
                    seq, rest = prefilling[0]
                    chunk, rest = rest[:room], rest[room:]
                    entries += [_Entry(seq, t, not rest and i == len(chunk) - 1) for i, t in enumerate(chunk)]
                    room -= len(chunk)
                    if rest:
                        prefilling[0] = (seq, rest)
                    else:
                        prefilling.pop(0)
                        decoding.append((seq, []))
                        prompts_done += 1
                if not entries:
                    continue
                self._step(entries, decode_rows, decode_tokens, prompts_done)
                still: list[tuple[QueuedSequence, list[int]]] = waiting  # rows still feeding forced tokens
                for entry in entries:
                    if not entry.logits:
                        continue
                    row = entry.seq.row
                    token = row.next_token(self._logits(entry.index))
                    if token is not None:
                        entry.seq.out.put(token)
                        if not row.ends_after_token():
                            forced, ended = row.take_forced(self.fast_forward)
                            for t in forced:
                                entry.seq.out.put(t)
                            if not ended:
                                still.append((entry.seq, [token, *forced]))
                                continue
                            self.engine_time.forced_tokens += len(forced)  # the row ended: never fed
                    entry.seq.finish()
                    self._release(entry.seq)
                decoding[:] = still
            except Exception as exc:  # a failed step fails the running requests, not the server
                log.exception("llama.cpp step failed")
                for seq in [s for s, _ in decoding] + [s for s, _ in prefilling]:
                    if seq.slot is not None:  # its cache is in an unknown state: forget it
                        self._forget(seq.slot)
                    self._release(seq)
                    seq.fail(f"generation failed: {exc}")
                decoding, prefilling = [], []

    def _ended_if_gone(self, seq: QueuedSequence) -> bool:
        if seq.drop_if_gone():
            self._release(seq)
            return True
        return False

    def _admit(self, prefilling: list[tuple[QueuedSequence, list[int]]]) -> None:
        while True:
            seq = self._next_waiting(block=False)
            if seq is None:
                return
            if seq.drop_if_gone():
                continue
            try:
                taken = self._take_slot(seq.prompt_ids)
            except Exception as exc:  # the request fails, never waits forever; no free slot is trusted
                log.exception("llama.cpp could not give a request a slot")
                self._forget_free_slots()
                seq.fail(f"generation failed: {exc}")
                continue
            if taken is None:
                self._held = seq  # every slot is busy: wait for a row to leave
                return
            seq.slot, same = taken
            seq.position = same
            self.saved.count(len(seq.prompt_ids), same)
            log.debug("slot %d: %d prompt tokens, %d reused", seq.slot.seq_id, len(seq.prompt_ids), same)
            prefilling.append((seq, seq.prompt_ids[same:]))

    def _step(self, entries: list[_Entry], decode_rows: int, decode_tokens: int, prompts_done: int) -> None:
        """One ``llama_decode`` over ``entries``: ``decode_rows`` rows' next tokens (``decode_tokens``
        with the tokens their grammars forced), then prompt chunks (``prompts_done`` prompts end in
        this step). Sets each entry's ``index`` in the batch.

        With a stream per sequence, llama.cpp cuts a batch into micro-batches of sequences whose ids
        follow each other in batch order (``split_equal``), and each micro-batch reads every weight
        once more: 8 decode rows cost 45-53 ms in slot order, 109-121 ms shuffled, and 4 rows in
        slots 0, 2, 4, 6 as much as 8 in a row (SmolLM2-135M f32, 2 threads). So the batch goes in
        slot order, and an idle slot between two of the step's slots gets a placeholder token (its
        next position, no logits, removed after the step) when that costs less than the cut: when
        its cells do not lengthen the micro-batch's padded KV length, which every row's attention
        pays."""
        by_slot: dict[int, list[_Entry]] = {}
        for entry in entries:  # a prompt chunk's tokens keep their order
            by_slot.setdefault(entry.seq.slot.seq_id, []).append(entry)
        ids = sorted(by_slot)
        # Positions are read before the loop below advances them: a row's first token is its group's.
        longest = max(group[0].seq.position + len(group) for group in by_slot.values())
        padded = math.ceil(longest / KV_PAD) * KV_PAD
        rows: list[tuple[int, int, int, bool]] = []
        placeholders: list[tuple[int, int]] = []  # (sequence, position) to remove after the step
        for seq_id in range(ids[0], ids[-1] + 1):
            if seq_id not in by_slot:
                slot = self.slots[seq_id]
                position = len(slot.tokens)
                if (position + 1 <= padded and position + 1 <= self.max_context
                        and len(entries) + len(placeholders) < N_BATCH):
                    rows.append((0, position, seq_id, False))
                    placeholders.append((seq_id, position))
                continue
            for entry in by_slot[seq_id]:
                entry.index = len(rows)
                rows.append((entry.token, entry.seq.position, seq_id, entry.logits))
                entry.seq.position += 1
        start = time.perf_counter()
        try:
            self._decode(rows)
        finally:
            for seq_id, position in placeholders:
                self._lib.llama_memory_seq_rm(self._memory, seq_id, position, -1)
        seconds = time.perf_counter() - start
        for entry in entries:
            entry.seq.slot.tokens.append(entry.token)
        self.placeholders += len(placeholders)
        self.max_rows_seen = max(self.max_rows_seen, decode_rows)
        if len(entries) > decode_tokens:  # prompt tokens: the whole step is prefill time
            self.engine_time.prefill_seconds += seconds
            self.engine_time.prefills += prompts_done
        else:
            self.engine_time.add_step(seconds, decode_rows)

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``(token, position, sequence, wants logits)`` rows."""
        batch = self._batch
        for i, (token, position, seq_id, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(rows)
        with self._decode_lock:
            code = self._lib.llama_decode(self._ctx, batch)
        if code != 0:
            why = " (no room left in the KV cache)" if code == 1 else ""
            raise RuntimeError(f"llama_decode returned {code}{why}")

    def _logits(self, index: int) -> torch.Tensor:
        """Batch entry ``index``'s logits, a view of llama.cpp's own buffer (masked in place)."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)))

    # ------------------------------------------------------------------ benchmark reference

    def bare_generate(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """llama.cpp's own greedy loop (its sampler, one sequence), for benchmarking against
        :meth:`generate`; run it while no request is running."""
        lib = self._lib
        sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())
        out: list[int] = []
        try:
            slot = self.slots[0]
            with self._decode_lock:
                lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.tokens.clear()
            tokens = list(prompt_ids)
            while len(out) < max_tokens:
                for begin in range(0, len(tokens), N_BATCH):
                    position = len(slot.tokens) + begin
                    self._decode([(token, position + i, slot.seq_id, begin + i == len(tokens) - 1)
                                  for i, token in enumerate(tokens[begin:begin + N_BATCH])])
                slot.tokens += tokens
                with self._decode_lock:
                    token = int(lib.llama_sampler_sample(sampler, self._ctx, -1))
                if lib.llama_vocab_is_eog(self._vocab, token):
                    break
                out.append(token)
                tokens = [token]
        finally:
            lib.llama_sampler_free(sampler)
        return out

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None
