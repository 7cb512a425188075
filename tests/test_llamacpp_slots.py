"""The llamacpp backend's KV slots: which slot a prompt takes, what it keeps, what it copies in.

Runs without llama.cpp: the backend's slot logic is driven against a fake of the four C calls it
makes (``llama_memory_seq_rm``, ``llama_state_seq_get_size`` / ``_get_data`` / ``_set_data``), which
records them and keeps each sequence's "state" as the bytes of its tokens. The real calls are
exercised by ``tests/test_llamacpp_backend.py`` (``make test-llamacpp``).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
import pytest

from serve.backends.llamacpp_backend import SAVE_TOKENS, LlamaCppBackend, SavedPrompts, Slot


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
