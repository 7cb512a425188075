"""What the batching backends share: requests handed to one engine thread, tokens streamed back.

A batching backend (:mod:`serve.backends.transformers_batched`, :mod:`serve.backends.llamacpp_backend`)
owns its model from one engine thread. A request thread calls :meth:`EngineThread.generate`: it
queues a :class:`QueuedSequence` and yields the tokens the engine puts on the sequence's own queue,
until the engine puts :data:`END`. A consumer that stops early (a stop string matched, the client
left) marks its row abandoned, and the engine drops the row at its next step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from serve.backends.base import GenerationState, SamplingParams
from serve.backends.decode_row import DecodeRow
from serve.constraints.base import Matcher

log = logging.getLogger(__name__)

END = object()  # put on a sequence's queue after its last token


@dataclass
class QueuedSequence:
    prompt_ids: list[int]
    row: DecodeRow
    out: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)
    position: int = 0  # the next token's position (the row's own token count)
    slot: Any = None  # where the engine keeps this sequence's KV cache, if it keeps one per sequence

    @property
    def gone(self) -> bool:
        """Cancelled, or its consumer left: nothing more to compute for it."""
        return self.row.cancel.is_set() or self.row.abandoned

    def finish(self) -> None:
        """The row ended (its ``state`` says why): wake its consumer."""
        self.out.put(END)

    def drop_if_gone(self) -> bool:
        """End a sequence nobody waits for (cancelled: say so); True when it was dropped."""
        if not self.gone:
            return False
        self.row.cancelled()
        self.finish()
        return True

    def fail(self, message: str) -> None:
        self.row.end("error", message)
        self.finish()


class EngineThread:
    """The consumer side and the engine thread's life; subclasses write :meth:`_engine`."""

    def _init_queue(self) -> None:
        self._waiting: queue.SimpleQueue[QueuedSequence] = queue.SimpleQueue()
        self._held: QueuedSequence | None = None  # taken from the queue but not yet admitted (no room)
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def generate(self, prompt_ids: list[int], params: SamplingParams, matcher: Matcher | None,
                 cancel: threading.Event, state: GenerationState) -> Iterator[int]:
        seq = QueuedSequence(prompt_ids=list(prompt_ids), row=DecodeRow(params, matcher, cancel, state),
                             position=len(prompt_ids))
        self._ensure_engine()
        self._waiting.put(seq)
        try:
            while True:
                item = seq.out.get()
                if item is END:
                    return
                yield item  # type: ignore[misc]
        finally:
            seq.row.abandoned = True

    def _ensure_engine(self) -> None:
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._engine, name="batch-engine", daemon=True)
                self._thread.start()

    def _next_waiting(self, block: bool) -> QueuedSequence | None:
        """The held sequence, else the next queued one (waiting for one when ``block``), else None."""
        if self._held is not None:
            seq, self._held = self._held, None
            return seq
        try:
            return self._waiting.get() if block else self._waiting.get_nowait()
        except queue.Empty:
            return None

    def _engine(self) -> None:
        raise NotImplementedError
