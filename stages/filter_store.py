"""The rows of one source that passed the per-row rules, kept for the rules that need every row.

The filter reads a source in chunks. What a chunk keeps is appended here: the texts (messages and
tools JSON) go to a spill file on disk, and memory holds only what the source-wide rules and the
mixing read: each row's content key, where its texts are, and the functions it calls (for the
per-function cap) — a few dozen bytes a row, whatever the length of the conversations.
Texts are read back one row at a time with ``os.pread`` (no memory map, so the pages read do not
count towards the process's resident memory).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.filter_rules import FIXES
from stages.row_pipeline import EncodedRow

# A bit per repaired defect, in FIXES order: the per-row record of what was fixed.
FIX_BITS = {fix: 1 << i for i, fix in enumerate(FIXES)}


def _fix_bits(fixes: tuple[str, ...]) -> int:
    return sum(FIX_BITS[f] for f in fixes) if fixes else 0


class SpilledRows:
    """Append-only store of rows; ``finish`` before reading texts or the per-row arrays."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb", buffering=1 << 20)
        self._size = 0
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in
                                                   ("key", "offset", "messages_len", "tools_len", "fixes",
                                                    "call_row", "call_function")}
        self.functions: dict[str, int] = {}  # called function name -> id
        self.count = 0
        self._fd = -1
        self.key = self.offset = self.messages_len = self.tools_len = self.fixes = np.empty(0, dtype=np.uint64)
        self.call_row = self.call_function = np.empty(0, dtype=np.int64)

    def add(self, rows: Sequence[EncodedRow]) -> None:
        """Append ``rows`` in their order: their texts to the spill, and in memory their content
        keys, fix bits (stages.filter_rules.FIXES) and the distinct functions each calls."""
        n = len(rows)
        if n == 0:
            return
        m_len = np.fromiter((len(r.messages) for r in rows), dtype=np.int64, count=n)
        t_len = np.fromiter((len(r.tools) for r in rows), dtype=np.int64, count=n)
        sizes = m_len + t_len
        offsets = self._size + np.cumsum(sizes) - sizes
        # One record per row: its messages JSON, then its tools JSON, as UTF-8 (through the
        # file's buffer: no joined copy of the chunk).
        self._file.writelines([part for r in rows for part in (r.messages, r.tools)])
        self._size += int(sizes.sum())
        call_rows: list[int] = []
        call_functions: list[int] = []
        for at, row in enumerate(rows, self.count):
            if row.calls:
                for name in sorted({name for name, _ in row.calls}):
                    call_rows.append(at)
                    call_functions.append(self._function_id(name))
        if call_rows:
            self._parts["call_row"].append(np.array(call_rows, dtype=np.int64))
            self._parts["call_function"].append(np.array(call_functions, dtype=np.int64))
        self._parts["key"].append(np.fromiter((r.key for r in rows), dtype=np.uint64, count=n))
        self._parts["offset"].append(offsets)
        self._parts["messages_len"].append(m_len)
        self._parts["tools_len"].append(t_len)
        self._parts["fixes"].append(np.fromiter((_fix_bits(r.fixes) for r in rows), dtype=np.uint8, count=n))
        self.count += n

    def _function_id(self, name: str) -> int:
        fid = self.functions.get(name)
        if fid is None:
            fid = self.functions[name] = len(self.functions)
        return fid

    def finish(self) -> None:
        """Close the spill for writing and concatenate the per-row arrays."""
        self._file.close()
        dtypes = {"key": np.uint64, "fixes": np.uint8}
        for name, parts in self._parts.items():
            dtype = dtypes.get(name, np.int64)
            setattr(self, name, np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype))
        self._parts = {}
        self._fd = os.open(self.path, os.O_RDONLY)

    def texts(self, i: int) -> tuple[str, str]:
        """(messages JSON, tools JSON) of row ``i``."""
        m_len = int(self.messages_len[i])
        data = os.pread(self._fd, m_len + int(self.tools_len[i]), int(self.offset[i]))
        return data[:m_len].decode(), data[m_len:].decode()

    def messages(self, i: int) -> str:
        return os.pread(self._fd, int(self.messages_len[i]), int(self.offset[i])).decode()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)
