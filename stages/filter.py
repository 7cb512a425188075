"""Stage ``filter``: data/raw/<source>.jsonl -> data/filtered/{stage1,stage2}/{train,validation}.jsonl.

    python -m stages.filter [--params params.yaml]

Each source is read in bounded chunks of lines. A chunk goes through the row pipeline
(stages/row_pipeline.py: the kind's normalizer, the structure rules, final JSON and content key)
and the table rules a row passes or fails alone (the offered tools' schemas, calls to offered
tools with valid arguments, length); what passes is spilled to disk (stages/filter_store.py),
keeping in memory only what the rules over the whole source need: each row's content key and the
functions it calls. Then those rules run (duplicates, the per-function cap), the validation split
is drawn, and the sources are mixed into the two training sets by per-source ratios and written
row by row. Every rule is named and counted (stages/filter_rules.py). Rows stay UTF-8 bytes from
the raw line to the spill (read, hashed and written as bytes, never decoded to be measured);
the per-row rules are plain Python over each chunk, polars does the whole-source rules.
Everything is deterministic and independent of input order and chunking: rows are ordered by a
hash of their content, never by input order.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import multiprocessing
import shutil
import tempfile
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, AnyStr

import numpy as np
import polars as pl
from pydantic import Field, model_validator
from tqdm import tqdm

from stages.config import StrictModel, load_section, log_config, setup_logging, stage_argparser
from stages.filter_rules import FIXES, RULES, Drop
from stages.filter_store import FIX_BITS, SpilledRows
from stages.kinds import Kind
from stages.parsing.json_codec import arguments_value
from stages.parsing.parsers import Parsers, cached_parsers
from stages.row_pipeline import EncodedRow, prepare_encoded
from stages.schema_validator import compiled_validator

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")
# A chunk ends at whichever comes first. Memory holds a few chunks' worth of rows and tables; the
# output does not depend on these numbers (tests/test_filter.py runs with tiny chunks).
CHUNK_ROWS = 4096
CHUNK_BYTES = 16 << 20


class MixConfig(StrictModel):
    """Per training set: source name -> ratio (above 1 repeats rows, below 1 subsamples them)."""

    stage1: dict[str, float]
    stage2: dict[str, float]


class FilterConfig(StrictModel):
    raw_dir: str
    out_dir: str
    metrics_file: str
    sources: dict[str, Kind] = Field(description="source name (data/raw/<name>.jsonl) -> kind")
    keep_dots: bool = Field(description="keep '.' in function names (OpenAI's API rejects them)")
    max_chars: int = Field(gt=0, description="longest row kept: chars of messages + tools JSON")
    max_rows_per_function: int | None = Field(gt=0, description="rows kept per called function; null: no cap")
    function_cap_by_source: dict[str, int | None] = Field(default_factory=dict, description=(
        "source name -> its own cap (null: none), in place of max_rows_per_function; e.g. environment "
        "sessions, which call their environment's few functions in every row by design"))
    validation_fraction: float = Field(ge=0.0, lt=1.0)
    seed: int
    workers: int = Field(ge=1, description="processes that read rows (the per-row Python part)")
    mix: MixConfig

    @model_validator(mode="after")
    def _mix_names_known(self) -> FilterConfig:
        for stage in STAGES:
            for name, ratio in getattr(self.mix, stage).items():
                if name not in self.sources:
                    raise ValueError(f"mix.{stage}.{name}: not a declared source ({', '.join(self.sources)})")
                if not (ratio >= 0 and math.isfinite(ratio)):
                    raise ValueError(f"mix.{stage}.{name}: ratio must be a finite number >= 0")
        for name, cap in self.function_cap_by_source.items():
            if name not in self.sources:
                raise ValueError(f"function_cap_by_source.{name}: not a declared source ({', '.join(self.sources)})")
            if cap is not None and cap <= 0:
                raise ValueError(f"function_cap_by_source.{name}: a cap must be > 0 or null")
        return self

    def function_cap(self, source: str) -> int | None:
        return self.function_cap_by_source.get(source, self.max_rows_per_function)


# ----------------------------------------------------------------------------------------------
# Reading: lines in chunks, the row pipeline over each chunk, into tables


def iter_lines(path: Path) -> Iterator[bytes]:
    """Non-empty lines of a JSONL file, one at a time, as bytes (the JSON reader decodes them: a
    line that is not UTF-8 is counted unparseable)."""
    with path.open("rb", buffering=1 << 20) as fh:
        for raw in fh:
            # Same test as `raw.strip()`, without copying the line.
            if raw and not raw.isspace():
                yield raw


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    """:func:`iter_lines` as text (the first ``limit``; all when None); lines that are not UTF-8
    become "" (benchmarks and tests hand these to the row-by-row baseline; the stage streams bytes)."""
    out = []
    for raw in itertools.islice(iter_lines(path), limit):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("")
    return out


def chunked(lines: Iterable[AnyStr], max_rows: int = CHUNK_ROWS,
            max_bytes: int = CHUNK_BYTES) -> Iterator[list[AnyStr]]:
    """Runs of consecutive lines, each at most ``max_rows`` lines, ending at the first line that
    brings it to ``max_bytes`` (bytes of bytes lines, characters of text lines)."""
    chunk: list[AnyStr] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line)
        if len(chunk) >= max_rows or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass
class _Chunk:
    """What reading a run of raw lines produced: the rows that passed the row pipeline, in order."""

    lines: int = 0
    rows: list[EncodedRow] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees everything here).

    Reading allocates millions of acyclic objects; every collection pass would visit each live
    one (a cache miss per string), many times per source. Nested use keeps the outer state.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_chunk(kind: str, lines: list[str] | list[bytes], parsers: Parsers) -> _Chunk:
    out = _Chunk(lines=len(lines))
    rows = out.rows
    with _no_cyclic_gc():
        for line in lines:
            try:
                rows.append(prepare_encoded(kind, line, parsers))
            except Drop as drop:
                out.drops[drop.rule] += 1
            except Exception as exc:  # noqa: BLE001 - a row must never crash the stage
                log.debug("unreadable %s row: %r", kind, exc)
                out.drops["unparseable"] += 1
    return out


# Set in each reading process by its initializer: the name rule.
_WORKER_PARSERS: Parsers | None = None


def _init_worker(keep_dots: bool) -> None:
    global _WORKER_PARSERS
    _WORKER_PARSERS = cached_parsers(keep_dots)  # kept across the process's chunks and sources


def _read_in_worker(kind: str, lines: list[str] | list[bytes]) -> _Chunk:
    assert _WORKER_PARSERS is not None
    return _read_chunk(kind, lines, _WORKER_PARSERS)


class RowReaders:
    """Where the row pipeline runs: in this process (``workers`` 1), or in ``workers`` spawned
    processes started once for every source (a context manager: they stop on exit). Each process
    keeps its parser caches from source to source, as this process does.

    Spawned, not forked: a process forked after polars or torch started their thread pools can
    deadlock in the child (seen: this stage's worker test hung inside the full test run, where
    earlier tests had started those pools)."""

    def __init__(self, workers: int, keep_dots: bool) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers, self.keep_dots = workers, keep_dots
        self._pool: Any = None

    def __enter__(self) -> RowReaders:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.keep_dots,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            if exc[0] is None:
                self._pool.close()  # every task was collected: let the processes end
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None

    def read(self, kind: str, chunks: Iterable[list[str] | list[bytes]], parsers: Parsers) -> Iterator[_Chunk]:
        """The row pipeline over each chunk, in order. In the processes, at most two chunks per
        process are in flight (so memory stays bounded), handed back in input order."""
        if self._pool is None:
            if self.workers > 1:
                raise RuntimeError("RowReaders with workers > 1 is used inside a `with` block")
            for lines in chunks:
                yield _read_chunk(kind, lines, parsers)
            return
        if parsers.keep_dots != self.keep_dots:  # the processes parse with their own name rule
            raise ValueError("the reading processes were started with another keep_dots than these parsers'")
        pending: deque[Any] = deque()
        for lines in chunks:
            pending.append(self._pool.apply_async(_read_in_worker, (kind, lines)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ----------------------------------------------------------------------------------------------
# Table rules a row passes or fails on its own


# What a tool list with an unusable schema gets instead of its checks.
_BAD_SCHEMA: dict[str, Callable[[Any], bool]] = {}


def _checks(schemas: tuple[tuple[str, str], ...]) -> dict[str, Callable[[Any], bool]]:
    """Offered name -> check of argument values; :data:`_BAD_SCHEMA` when a schema is unusable."""
    checks = {}
    for name, schema in schemas:
        try:
            checks[name] = compiled_validator(schema)
        except Drop:
            return _BAD_SCHEMA
    return checks


def _char_length(row: EncodedRow, max_chars: int) -> int:
    """Characters of the row's two texts; exact when above ``max_chars``. A UTF-8 text has no
    more characters than bytes, so only rows longer than that in bytes are decoded to count."""
    size = len(row.messages) + len(row.tools)
    if size <= max_chars:
        return size
    return len(row.messages.decode()) + len(row.tools.decode())


def check_rows(rows: list[EncodedRow], max_chars: int) -> tuple[list[EncodedRow], Counter[str]]:
    """The table rules a row passes or fails on its own, in RULES order: bad_tool_schema,
    unknown_tool, invalid_arguments, too_long. Returns the rows that pass, in order, and the drops.

    Each distinct tool list is judged once per chunk (its schemas checked and compiled once per
    run, ``compiled_validator``), then each call's arguments against its tool's compiled check.
    """
    # Keyed by the schemas tuple's identity: rows of one cached tool list share it, and every row
    # (so every key) stays alive while the chunk is checked.
    by_list: dict[int, dict[str, Callable[[Any], bool]]] = {}
    passed: list[EncodedRow] = []
    drops: Counter[str] = Counter()
    for row in rows:
        checks = by_list.get(id(row.schemas))
        if checks is None:
            checks = by_list[id(row.schemas)] = _checks(row.schemas)
        if checks is _BAD_SCHEMA:
            drops["bad_tool_schema"] += 1
            continue
        rule = None
        if row.calls:
            for name, _ in row.calls:
                if name not in checks:
                    rule = "unknown_tool"
                    break
            else:
                for name, arguments in row.calls:
                    if not checks[name](arguments_value(arguments)):
                        rule = "invalid_arguments"
                        break
        if rule is None and _char_length(row, max_chars) > max_chars:
            rule = "too_long"
        if rule is None:
            passed.append(row)
        else:
            drops[rule] += 1
    return passed, drops


# ----------------------------------------------------------------------------------------------
# Rules that need every row of a source (polars, over the table of kept rows' keys and calls)

# A table of kept rows: ``row`` (index into the source's SpilledRows) and ``key`` (its content key).
ROWS = {"row": pl.get_index_type(), "key": pl.UInt64}


def _shares(column: str) -> pl.Expr:
    """Rows of a table sorted by ``column`` whose value is also the previous or the next row's."""
    value = pl.col(column)
    return ((value == value.shift()) | (value == value.shift(-1))).fill_null(False)


def deduplicate_and_cap(store: SpilledRows, max_rows_per_function: int | None) -> tuple[pl.DataFrame, Counter[str]]:
    """Exact duplicates, then the per-function cap, over all rows that passed the per-row rules.

    Returns the kept rows (:data:`ROWS`) ordered by (content key, messages), and the drops.
    """
    table = pl.DataFrame({"key": store.key}, schema={"key": pl.UInt64}).with_row_index("row").sort("key", "row")
    # Equal rows have equal content keys, so only rows sharing a key are compared by their texts
    # (read from the spill a key at a time); a copy of a row earlier in the source goes, which
    # cannot change the output. Rows that only share a key (a hash collision) stay, ranked by
    # their messages (``tie``), as everywhere the key is the order. (key, tie) is unique, so the
    # order is the same on any thread count.
    tie = np.zeros(table.height, dtype=np.int32)  # -1: a duplicate
    shared = table.with_row_index("at").filter(_shares("key"))
    for _, group in itertools.groupby(shared.iter_rows(), key=lambda entry: entry[2]):
        members = list(group)  # (at, row, key), by row
        first: dict[tuple[str, str], int] = {}
        for _, i, _ in members:
            first.setdefault(store.texts(i), i)
        rank = {i: r for r, (_, i) in enumerate(sorted(first.items(), key=lambda item: (item[0][0], item[1])))}
        for at, i, _ in members:
            tie[at] = rank.get(i, -1)
    kept = table.with_columns(tie=tie).filter(pl.col("tie") >= 0).sort("key", "tie").drop("tie")
    drops = Counter(duplicate=store.count - kept.height)
    if max_rows_per_function is not None and kept.height:
        # Rank each function's rows by content (order-independent); a row over the cap for any
        # function it calls is dropped. Dropped rows still hold their rank, as in the baseline. A
        # row calls each function once, so the ranks within a function are distinct.
        over = (pl.LazyFrame({"row": store.call_row, "function": store.call_function})
                .with_columns(pl.col("row").cast(ROWS["row"]))
                .join(kept.lazy().select("row").with_row_index("rank"), on="row")
                .filter(pl.col("rank").rank("ordinal").over("function") > max_rows_per_function)
                .collect())
        capped = kept.filter(~pl.col("row").is_in(over["row"].implode()))
        drops["function_cap"] = kept.height - capped.height
        kept = capped
    return kept, drops


@dataclass
class FilteredSource:
    """One source after every rule: the kept rows (:data:`ROWS`, ordered by content key then
    messages), the lines read and the drops per rule."""

    store: SpilledRows
    kept: pl.DataFrame
    rows_in: int
    drops: Counter[str]

    @property
    def height(self) -> int:
        return self.kept.height

    def fixed(self) -> dict[str, int]:
        """Kept rows per repaired defect (stages.filter_rules.FIXES)."""
        masks = pl.Series(self.store.fixes).gather(self.kept["row"])
        return {fix: int((masks & bit).cast(pl.Boolean).sum()) for fix, bit in FIX_BITS.items()}

    def rows(self) -> Iterator[tuple[str, str]]:
        """(messages, tools) of each kept row, in order (reads the spill)."""
        for i in self.kept["row"]:
            yield self.store.texts(i)

    def close(self) -> None:
        self.store.close()


def filter_source(kind: str, lines: Iterable[str], parsers: Parsers, max_chars: int,
                  max_rows_per_function: int | None, spill_dir: Path | None = None, desc: str = "",
                  readers: RowReaders | None = None, chunk_rows: int = CHUNK_ROWS,
                  chunk_bytes: int = CHUNK_BYTES) -> FilteredSource:
    """Read, check and filter one source's lines in chunks (``lines`` may be a lazy iterator), the
    row pipeline in ``readers`` (None: in this process).

    The kept rows' texts are spilled to a file in ``spill_dir`` (a temporary directory when
    None): call :meth:`FilteredSource.close` when done with them.
    """
    if spill_dir is None:
        spill_dir = Path(tempfile.mkdtemp(prefix="filter-"))
    handle = tempfile.NamedTemporaryFile(prefix=f"{desc or kind}-", suffix=".spill", dir=spill_dir, delete=False)
    handle.close()
    store = SpilledRows(Path(handle.name))
    drops: Counter[str] = Counter()
    rows_in = 0
    try:
        with _no_cyclic_gc(), tqdm(desc=f"filter {desc or kind}", unit="row", mininterval=5.0, leave=False) as bar:
            for chunk in (readers or RowReaders(1, parsers.keep_dots)).read(
                    kind, chunked(lines, chunk_rows, chunk_bytes), parsers):
                passed, table_drops = check_rows(chunk.rows, max_chars)
                store.add(passed)
                drops.update(chunk.drops)
                drops.update(table_drops)
                rows_in += chunk.lines
                bar.update(chunk.lines)
            store.finish()
            kept, source_drops = deduplicate_and_cap(store, max_rows_per_function)
            parsers.drop_text_caches()
    except BaseException:
        store.close()
        raise
    drops.update(source_drops)
    return FilteredSource(store, kept, rows_in, drops)


# ----------------------------------------------------------------------------------------------
# Splitting and mixing


def _hash53(keys: pl.Series, salt: int, copy: pl.Series | None = None) -> np.ndarray:
    """Deterministic 53-bit hash per key: splitmix64 of key ^ salt (with ``copy``: of key ^ copy *
    C ^ salt), top 53 bits. numpy, not polars: it needs wrapping uint64 multiplication and shifts,
    which numpy defines and polars neither documents (its integer overflow) nor has (shifts)."""
    with np.errstate(over="ignore"):
        x = keys.to_numpy().astype(np.uint64)  # a copy, changed in place: no temporary array per step
        if copy is not None:
            x ^= copy.to_numpy().astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
        x ^= np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        x += np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        x >>= np.uint64(11)
    return x


def _unit(keys: pl.Series, salt: int) -> pl.Series:
    """Deterministic uniform [0, 1) per key (exact: a 53-bit hash over 2^53)."""
    return pl.Series(_hash53(keys, salt) * (1.0 / (1 << 53)))


def _salt(seed: int, *parts: str) -> int:
    return (seed * 0x100000001B3) ^ zlib.crc32("/".join(parts).encode())


def split_validation(source: FilteredSource, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, validation) rows (:data:`ROWS`), by content hash, before any repetition, so no row is in both."""
    is_val = _unit(source.kept["key"], _salt(seed, "validation")) < fraction
    return source.kept.filter(~is_val), source.kept.filter(is_val)


def copies(keys: pl.Series, ratio: float, seed: int, stage: str, source: str, repeat: bool) -> pl.Series:
    """Copies of each row for a ratio: floor(ratio) plus a seeded fraction. Validation (repeat=False)
    only subsamples."""
    if not repeat:
        ratio = min(ratio, 1.0)
    full = math.floor(ratio)
    return (_unit(keys, _salt(seed, stage, source, "mix")) < (ratio - full)).cast(pl.UInt32) + full


def mix_and_shuffle(parts: dict[str, tuple[FilteredSource, pl.DataFrame]], ratios: dict[str, float], seed: int,
                    stage: str, split: str) -> tuple[list[str], pl.DataFrame]:
    """Mix the sources' rows by ratio and order them by a hash of (content key, copy); ties (a hash
    collision) by source, messages, then copy. Returns the source names and the entries in output
    order: ``source`` (index into the names), ``row`` and ``copy``."""
    names = sorted(ratios)
    assert len(names) < 1 << 11, "at most 2,047 sources a set"
    entries = [pl.DataFrame(schema=ROWS | {"source": pl.UInt32, "copy": pl.UInt32})]
    for s, name in enumerate(names):
        rows = parts[name][1]
        n = copies(rows["key"], ratios[name], seed, stage, name, repeat=split == "train")
        entries.append(rows.with_columns(source=pl.lit(s, pl.UInt32), copy=pl.int_ranges(0, n, dtype=pl.UInt32))
                       .filter(n > 0).explode("copy"))
    mixed = pl.concat(entries)
    # Sorted by the hash, then source: one uint64 (53 bits of hash, 11 of source), stable.
    order = _hash53(mixed["key"], _salt(seed, stage, split, "order"), mixed["copy"]) << np.uint64(11)
    order |= mixed["source"].to_numpy().astype(np.uint64)
    mixed = mixed.select("source", "row", "copy", order=order).sort("order", maintain_order=True)
    # Entries sharing both are rare: ordered by their messages, then copy, then as they came.
    tied = mixed.with_row_index("at").filter(_shares("order"))
    stores = [parts[name][0].store for name in names]
    messages = pl.Series([stores[s].messages(r) for s, r in tied.select("source", "row").iter_rows()], dtype=pl.String)
    ranked = tied.with_columns(messages=messages).sort("order", "messages", "copy", "at")
    mixed = mixed.with_columns(mixed["row"].scatter(tied["at"], ranked["row"]),
                               mixed["copy"].scatter(tied["at"], ranked["copy"]))
    return names, mixed.drop("order")


def write_jsonl(names: list[str], mixed: pl.DataFrame, parts: dict[str, tuple[FilteredSource, pl.DataFrame]],
                path: Path) -> None:
    """One ``{"messages", "tools", "source"}`` line per entry: the bytes ``json.dumps(row,
    ensure_ascii=False)`` writes, put together from each string's encoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stores = [parts[name][0].store for name in names]
    sources = [encode_basestring(name) for name in names]
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for block in mixed.select("source", "row").iter_slices(1024):  # entries turned into lines at a time
            buffer: list[str] = []
            for s, row in zip(block["source"].to_list(), block["row"].to_list(), strict=True):
                messages, tools = stores[s].texts(row)
                buffer.append(f'{{"messages": {encode_basestring(messages)}, "tools": {encode_basestring(tools)}, '
                              f'"source": {sources[s]}}}\n')
            fh.write("".join(buffer))


# ----------------------------------------------------------------------------------------------
# The stage


def run(cfg: FilterConfig, chunk_rows: int = CHUNK_ROWS, chunk_bytes: int = CHUNK_BYTES) -> dict:
    raw_dir, out_dir = Path(cfg.raw_dir), Path(cfg.out_dir)
    missing = [name for name in cfg.sources if not (raw_dir / f"{name}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"filter: no raw file for source(s) {missing} in {raw_dir} (run the raw stage)")
    parsers = cached_parsers(cfg.keep_dots)
    metrics: dict = {"sources": {}, "dropped": {}, "fixed": {}, "outputs": {}}
    total: Counter[str] = Counter()
    fixed: Counter[str] = Counter()
    # The kept rows' texts wait here, beside the outputs (a filesystem with room for them).
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    spill_dir = Path(tempfile.mkdtemp(prefix=".filter-spill-", dir=out_dir.parent))
    filtered: dict[str, FilteredSource] = {}
    try:
        with RowReaders(cfg.workers, cfg.keep_dots) as readers:  # one set of processes for every source
            for name, kind in sorted(cfg.sources.items()):
                source = filtered[name] = filter_source(
                    kind, iter_lines(raw_dir / f"{name}.jsonl"), parsers, cfg.max_chars, cfg.function_cap(name),
                    spill_dir, desc=name, readers=readers, chunk_rows=chunk_rows, chunk_bytes=chunk_bytes)
                total.update(source.drops)
                fixed.update(source.fixed())
                metrics["sources"][name] = {
                    "kind": kind, "rows_in": source.rows_in, "rows_out": source.height,
                    "dropped": {rule: source.drops.get(rule, 0) for rule in RULES}, "fixed": source.fixed(),
                }
                log.info("%s (%s): %d rows in, %d kept, dropped %s", name, kind, source.rows_in, source.height,
                         dict(sorted((r, n) for r, n in source.drops.items() if n)))
        metrics["dropped"] = {rule: total.get(rule, 0) for rule in RULES}
        metrics["fixed"] = {fix: fixed.get(fix, 0) for fix in FIXES}
        splits = {name: split_validation(source, cfg.validation_fraction, cfg.seed)
                  for name, source in filtered.items()}
        for stage in STAGES:
            ratios = getattr(cfg.mix, stage)
            for split_index, split in enumerate(("train", "validation")):
                parts = {name: (filtered[name], splits[name][split_index]) for name in ratios}
                names, mixed = mix_and_shuffle(parts, ratios, cfg.seed, stage, split)
                path = out_dir / stage / f"{split}.jsonl"
                write_jsonl(names, mixed, parts, path)
                metrics["outputs"][f"{stage}/{split}"] = {
                    "rows": mixed.height,
                    "per_source": {names[s]: n for s, n in mixed.group_by("source").len().iter_rows()},
                }
                log.info("wrote %s: %d rows", path, mixed.height)
    finally:
        for source in filtered.values():
            source.close()
        shutil.rmtree(spill_dir, ignore_errors=True)
    metrics_path = Path(cfg.metrics_file)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = stage_argparser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    cfg = load_section("filter", FilterConfig, args.params)
    log_config("filter", cfg)
    run(cfg)


if __name__ == "__main__":
    main()
