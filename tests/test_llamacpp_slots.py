"""The llamacpp backend's KV slots: which slot a prompt takes, what it keeps, what it copies in.

Runs without llama.cpp: the backend's slot logic is driven against a fake of the four C calls it
makes (``llama_memory_seq_rm``, ``llama_state_seq_get_size`` / ``_get_data`` / ``_set_data``), which
records them and keeps each sequence's "state" as the bytes of its tokens. The real calls are
exercised by ``tests/test_llamacpp_backend.py`` (``make test-llamacpp``).
"""

from __future__ import annotations

import ctypes
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from serve.backends.base import EngineTime
from serve.backends.llamacpp_backend import N_BATCH, SAVE_TOKENS, LlamaCppBackend, SavedPrompts, Slot, _Entry


class FakeLib:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.states: dict[int, bytes] = {}

    def llama_memory_seq_rm(self, memory: Any, seq: int, p0: int, p1: int) -> bool:
        self.calls.append(("rm", seq, p0, p1))
        return True

    def llama_state_seq_get_size(self, ctx: Any, seq: int) -> int:
        return len(self.states.get(seq, b"")) or 1

    def llama_state_seq_get_data(self, ctx: Any, buffer: Any, size: int, seq: int) -> int:
        data = self.states.get(seq, b"")
        ctypes.memmove(buffer, data, len(data))
        self.calls.append(("get", seq))
        return len(data)

    def llama_state_seq_set_data(self, ctx: Any, buffer: Any, size: int, seq: int) -> int:
        self.states[seq] = bytes(buffer)[:size]
        self.calls.append(("set", seq))
        return size


def backend(slots: list[list[int]], busy: tuple[int, ...] = (), saved_mb: float = 0) -> tuple[Any, FakeLib]:
    b: Any = object.__new__(LlamaCppBackend)
    lib = FakeLib()
    b._lib, b._memory, b._ctx = lib, None, None
    b._decode_lock = threading.Lock()
    b.slots = [Slot(i, list(tokens), busy=i in busy, last_used=i + 1) for i, tokens in enumerate(slots)]
    for slot in b.slots:
        lib.states[slot.seq_id] = bytes(t % 256 for t in slot.tokens)
    b.saved = SavedPrompts(int(saved_mb * 2**20))
    b._clock, b.copied = 10, 0
    return b, lib


TOOLS = list(range(100, 400))  # a 300-token tool block


def test_a_prompt_takes_the_free_slot_holding_its_prefix_and_keeps_it() -> None:
    b, lib = backend([[1, 2, 3], TOOLS + [7, 8], [9] * 50])
    slot, same = b._take_slot(TOOLS + [5, 6])
    assert slot.seq_id == 1 and same == 300 and slot.tokens == TOOLS and slot.busy
    assert ("rm", 1, 300, -1) in lib.calls


def test_at_least_one_prompt_token_is_left_to_evaluate() -> None:
    b, _ = backend([TOOLS])
    slot, same = b._take_slot(list(TOOLS))
    assert same == len(TOOLS) - 1 and slot.tokens == TOOLS[:-1]


def test_a_few_shared_template_tokens_do_not_evict_a_cached_tool_list() -> None:
    # Slot 0 shares 2 of 40 tokens (under 10 %): the least recently used slot is taken instead.
    b, _ = backend([[1, 2] + TOOLS, [50] * 10, [60] * 10])
    b.slots[0].last_used = 99  # the tool list was used last; slot 1 least recently
    slot, same = b._take_slot([1, 2] + [70] * 38)
    assert slot.seq_id == 1 and same == 0 and b.slots[0].tokens == [1, 2] + TOOLS


def test_a_busy_slots_prefix_is_copied_into_the_free_slot() -> None:
    b, lib = backend([TOOLS + [7], [50] * 10], busy=(0,))
    slot, same = b._take_slot(TOOLS + [8, 9])
    assert slot.seq_id == 1 and same == 300 and slot.tokens == TOOLS and b.copied == 1
    assert ("get", 0) in lib.calls and ("set", 1) in lib.calls
    assert b.slots[0].tokens == TOOLS + [7] and b.slots[0].busy  # the donor keeps its own


def test_no_slot_is_free_while_all_are_busy() -> None:
    b, _ = backend([[1], [2]], busy=(0, 1))
    assert b._take_slot([1, 2, 3]) is None


def test_a_slot_giving_up_a_long_prompt_saves_it_and_a_later_prompt_gets_it_back() -> None:
    b, lib = backend([TOOLS + [7]], saved_mb=1)
    slot, same = b._take_slot([50] * 100)  # loses 301 tokens >= SAVE_TOKENS: saved first
    assert same == 0 and len(b.saved) == 1 and ("get", 0) in lib.calls
    slot.busy = False
    slot.tokens[:] = [50] * 100
    slot, same = b._take_slot(TOOLS + [8])  # the saved state shares 300 tokens, the slot none
    assert same == 300 and slot.tokens == TOOLS and b.copied == 1 and ("set", 0) in lib.calls
    assert len(b.saved) == 2  # the [50] * 100 prompt it gave up is saved in turn


def test_a_saved_donor_is_read_before_saving_the_slot_can_evict_it() -> None:
    # The budget holds one state: saving the slot's own 100 tokens evicts the saved tool list,
    # which the prompt is about to be given.
    b, lib = backend([[50] * 100])
    b.saved = SavedPrompts(max_bytes=320)
    b.saved.put(tuple(TOOLS), bytearray(t % 256 for t in TOOLS))
    slot, same = b._take_slot(TOOLS + [8])
    assert same == 300 and slot.tokens == TOOLS and b.copied == 1
    assert lib.states[0] == bytes(t % 256 for t in TOOLS)
    assert list(b.saved._entries) == [tuple([50] * 100)]


def test_a_request_whose_slot_cannot_be_prepared_fails_instead_of_waiting_forever() -> None:
    from serve.backends.base import GenerationState, SamplingParams
    from serve.backends.decode_row import DecodeRow
    from serve.backends.engine_thread import END, QueuedSequence

    b, lib = backend([[1, 2, 3], [4, 5]], busy=(1,))
    b._init_queue()

    def broken(prompt: list[int]) -> None:
        b.slots[0].tokens.append(99)  # half done: the slot's tokens no longer match its cells
        raise KeyError("lost")

    b._take_slot = broken
    state = GenerationState()
    seq = QueuedSequence([7, 8], DecodeRow(SamplingParams(max_tokens=4), None, threading.Event(), state))
    b._waiting.put(seq)
    prefilling: list[Any] = []
    b._admit(prefilling)
    assert seq.out.get_nowait() is END and state.finish_reason == "error" and "lost" in (state.error or "")
    assert prefilling == [] and b.slots[0].tokens == [] and ("rm", 0, -1, -1) in lib.calls
    assert b.slots[1].tokens == [4, 5]  # a busy slot is left alone


def test_a_short_loss_is_not_saved_and_nothing_is_saved_without_a_budget() -> None:
    b, _ = backend([TOOLS + [7] * (SAVE_TOKENS - 1)], saved_mb=1)
    b._take_slot(TOOLS + [8])
    assert len(b.saved) == 0
    b, _ = backend([TOOLS], saved_mb=0)
    b._take_slot([50] * 100)
    assert len(b.saved) == 0


def test_saved_prompts_keep_their_budget_least_recently_used_first_out() -> None:
    saved = SavedPrompts(max_bytes=250)
    saved.put((1, 2), b"a" * 100)
    saved.put((3, 4), b"b" * 100)
    saved.get((1, 2))  # used: (3, 4) is now the oldest
    saved.put((5, 6), b"c" * 100)
    assert saved.bytes == 200 and saved.best(np.asarray([3, 4, 9]))[1] == 0
    assert saved.best(np.asarray([1, 2, 9])) == ((1, 2), 2)
    saved.put((1, 2, 7, 8), b"d" * 100)  # holds (1, 2): the older entry goes
    assert len(saved) == 2 and saved.covers([1, 2, 7]) and not saved.covers([1, 2, 9])
    saved.put((9,), b"e" * 1000)  # larger than the whole budget: not kept
    assert len(saved) == 2


@pytest.mark.parametrize("backend_name", ["transformers", "llamacpp"])
def test_the_evaluate_stage_passes_batching_and_the_prefix_cache_to_both_cpu_backends(backend_name: str) -> None:
    from stages.evaluation.config import ModelEntry, ServerSettings
    from stages.evaluation.server import server_command

    server = ServerSettings(backend=backend_name, engine="llguidance", max_output_tokens=128, max_text_tokens=32,
                            max_context=None, threads=None, max_batch=8, prefix_cache_mb=3072,
                            startup_timeout_s=60, extra_args=[])
    cmd = server_command(ModelEntry(path="models/stage2", format="octupus"), server, 8000, "m", "k")
    assert cmd[cmd.index("--max-batch") + 1] == "8" and cmd[cmd.index("--prefix-cache-mb") + 1] == "3072"
    assert cmd[cmd.index("--backend") + 1] == backend_name


# ---------------------------------------------------------------------------------------- a step's batch


def stepping(slots: list[list[int]], max_context: int = 4096) -> tuple[Any, FakeLib, list[list[tuple[int, ...]]]]:
    """A backend whose ``_decode`` records the rows it is given."""
    b, lib = backend(slots)
    b.max_context, b.max_batch = max_context, len(slots)
    b.engine_time, b.placeholders, b.max_rows_seen = EngineTime(), 0, 0
    batches: list[list[tuple[int, ...]]] = []
    b._decode = batches.append
    return b, lib, batches


def decoding(b: Any, seq_id: int, token: int) -> _Entry:
    """A decode row of slot ``seq_id``: its next position is the end of the slot's tokens."""
    slot = b.slots[seq_id]
    slot.busy = True
    return _Entry(SimpleNamespace(slot=slot, position=len(slot.tokens)), token, True)


def test_a_step_puts_its_rows_in_slot_order_and_each_entry_finds_its_logits() -> None:
    b, _, batches = stepping([[1] * 5, [2] * 7, [3] * 3])
    entries = [decoding(b, 2, 30), decoding(b, 0, 10), decoding(b, 1, 20)]
    b._step(entries, decode_rows=3, decode_tokens=3, prompts_done=0)
    assert batches == [[(10, 5, 0, True), (20, 7, 1, True), (30, 3, 2, True)]]
    assert [e.index for e in entries] == [2, 0, 1]
    assert [len(s.tokens) for s in b.slots] == [6, 8, 4] and b.placeholders == 0


def test_an_idle_slot_between_two_rows_gets_a_placeholder_that_is_removed_after_the_step() -> None:
    # llama.cpp cuts a micro-batch at a gap in the sequence ids; slot 1 is idle with 4 cells.
    b, lib, batches = stepping([[1] * 5, [2] * 4, [3] * 3, [4] * 9])
    entries = [decoding(b, 2, 30), decoding(b, 0, 10)]
    b._step(entries, decode_rows=2, decode_tokens=2, prompts_done=0)
    assert batches == [[(10, 5, 0, True), (0, 4, 1, False), (30, 3, 2, True)]]  # slot 3 is not between
    assert [e.index for e in entries] == [2, 0]
    assert ("rm", 1, 4, -1) in lib.calls and b.placeholders == 1
    assert b.slots[1].tokens == [2] * 4 and not b.slots[1].busy


def test_no_placeholder_when_its_cells_would_lengthen_every_rows_attention() -> None:
    # The idle slot holds 600 cells; the rows' longest is 5, padded to 256: cutting costs less.
    b, lib, batches = stepping([[1] * 5, [2] * 600, [3] * 3])
    b._step([decoding(b, 0, 10), decoding(b, 2, 30)], decode_rows=2, decode_tokens=2, prompts_done=0)
    assert batches == [[(10, 5, 0, True), (30, 3, 2, True)]]
    assert not [c for c in lib.calls if c[0] == "rm"] and b.placeholders == 0


def test_a_prompt_chunk_keeps_its_order_and_placeholders_never_overflow_the_batch() -> None:
    # Slots 1 and 2 are idle between a decode row (slot 0) and a prompt chunk (slot 3); the step's
    # 511 tokens leave room for one placeholder.
    b, _, batches = stepping([[1] * 5, [], [], [3] * 3])
    b.slots[3].busy = True
    chunk_seq = SimpleNamespace(slot=b.slots[3], position=3)
    size = N_BATCH - 2
    chunk = [_Entry(chunk_seq, t, i == size - 1) for i, t in enumerate(range(100, 100 + size))]
    row = decoding(b, 0, 10)
    b._step(chunk + [row], decode_rows=1, decode_tokens=1, prompts_done=1)
    (rows,) = batches
    assert len(rows) == N_BATCH and rows[:2] == [(10, 5, 0, True), (0, 0, 1, False)]
    assert [r[0] for r in rows[2:]] == list(range(100, 100 + size)) and {r[2] for r in rows[2:]} == {3}
    assert [r[1] for r in rows[2:]] == list(range(3, 3 + size)) and chunk_seq.position == 3 + size
    assert row.index == 0 and chunk[-1].index == N_BATCH - 1 and b.placeholders == 1
