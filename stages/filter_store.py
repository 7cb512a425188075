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
from pathlib import Path

import numpy as np
import polars as pl


class SpilledRows:
    """Append-only store of rows; ``finish`` before reading texts or the per-row arrays."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self._size = 0
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in
                                                   ("key", "offset", "messages_len", "tools_len", "fixes",
                                                    "call_row", "call_function")}
        self.functions: dict[str, int] = {}  # called function name -> id
        self.count = 0
        self._fd = -1
        self.key = self.offset = self.messages_len = self.tools_len = self.fixes = np.empty(0, dtype=np.uint64)
        self.call_row = self.call_function = np.empty(0, dtype=np.int64)

    def add(self, passed: pl.DataFrame, calls: pl.DataFrame) -> None:
        """Append the rows of ``passed`` (columns row, messages, tools, key, and optionally fixes: a
        bit mask of repaired schema defects) in their order, and the
        (row, name) pairs of ``calls`` whose row is among them (``row`` is the chunk's row index)."""
        n = passed.height
        if n == 0:
            return
        lengths = passed.select(pl.col("messages").str.len_bytes().cast(pl.Int64).alias("m"),
                                pl.col("tools").str.len_bytes().cast(pl.Int64).alias("t"))
        m_len = lengths.get_column("m").to_numpy()
        t_len = lengths.get_column("t").to_numpy()
        sizes = m_len + t_len
        offsets = self._size + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        # One record per row: its messages JSON, then its tools JSON, as UTF-8.
        blob = passed.select(pl.concat_str("messages", "tools").str.join("").cast(pl.Binary)).item()
        self._file.write(blob)
        self._size += len(blob)
        pairs = (calls.select("row", "name").unique()
                 .join(passed.select("row").with_row_index("at"), on="row", how="inner").sort("at", "name"))
        if pairs.height:
            names = pairs.get_column("name").to_list()
            ids = np.fromiter((self._function_id(name) for name in names), dtype=np.int64, count=len(names))
            self._parts["call_row"].append(self.count + pairs.get_column("at").to_numpy().astype(np.int64))
            self._parts["call_function"].append(ids)
        self._parts["key"].append(passed.get_column("key").to_numpy().astype(np.uint64))
        self._parts["offset"].append(offsets.astype(np.int64))
        self._parts["messages_len"].append(m_len.astype(np.int64))
        self._parts["tools_len"].append(t_len.astype(np.int64))
        self._parts["fixes"].append(passed.get_column("fixes").to_numpy().astype(np.uint8) if "fixes" in passed.columns
                                    else np.zeros(n, dtype=np.uint8))
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
