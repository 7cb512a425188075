"""Stage ``filter``: data/raw/<source>.jsonl -> data/filtered/{stage1,stage2}/{train,validation}.jsonl.

    python -m stages.filter [--params params.yaml]

Each source's lines go through the row pipeline (stages/row_pipeline.py: the kind's normalizer,
the structure rules, final JSON and content key), then through the table rules (the offered
tools' schemas, calls to offered tools with valid arguments, length), then the rules that need
the whole source (duplicates, the per-function cap), and are mixed into the two training sets by
per-source ratios. Every rule is named and counted (stages/filter_rules.py). polars does the table
work (joins of calls to offered tools, the distinct (schema, arguments) pairs to validate, dedup,
caps, splits, mixing); the per-row part is the reading of each row, with every repeated tool list,
tool and name parsed once. Everything is deterministic: rows are ordered by a hash of their
content, never by input order.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import polars as pl
from pydantic import Field, model_validator
from tqdm import tqdm

from stages.config import StrictModel, load_section, log_config, setup_logging, stage_argparser
from stages.filter_rules import RULES, Drop
from stages.kinds import Kind
from stages.parsing.json_codec import arguments_value
from stages.parsing.parsers import Parsers, cached_parsers
from stages.row_pipeline import prepare_row
from stages.schema_validator import compiled_validator, schema_ok

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")


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
    validation_fraction: float = Field(ge=0.0, lt=1.0)
    seed: int
    workers: int = Field(ge=1, description="processes that read rows (the per-row Python part)")
    mix: MixConfig

    @model_validator(mode="after")
    def _mix_names_known(self) -> "FilterConfig":
        for stage in STAGES:
            for name, ratio in getattr(self.mix, stage).items():
                if name not in self.sources:
                    raise ValueError(f"mix.{stage}.{name}: not a declared source ({', '.join(self.sources)})")
                if not (ratio >= 0 and math.isfinite(ratio)):
                    raise ValueError(f"mix.{stage}.{name}: ratio must be a finite number >= 0")
        return self


# ----------------------------------------------------------------------------------------------
# Reading: the row pipeline over runs of lines (chunks), into tables


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a JSONL file; lines that are not UTF-8 become "" (counted unparseable)."""
    out: list[str] = []
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("")
    return out


@dataclass
class _Chunk:
    """What reading a run of raw lines produced; calls refer to rows by index within the chunk."""

    messages: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    call_rows: list[int] = field(default_factory=list)
    call_names: list[str] = field(default_factory=list)
    call_args: list[str] = field(default_factory=list)
    tool_lists: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    drops: Counter[str] = field(default_factory=Counter)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees everything here).

    Reading allocates millions of acyclic objects and keeps lists of hundreds of thousands of
    long strings alive until they become frames; every collection pass would visit each of them
    (a cache miss per string), several times per source. Nested use keeps the outer state.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_chunk(kind: str, lines: Sequence[str], parsers: Parsers, desc: str, position: int = 0) -> _Chunk:
    out = _Chunk()
    with _no_cyclic_gc():
        for line in tqdm(lines, desc=f"normalize {desc}", unit="row", mininterval=5.0, position=position,
                         leave=position == 0):
            try:
                prepared = prepare_row(kind, line, parsers)
            except Drop as drop:
                out.drops[drop.rule] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - a row must never crash the stage
                log.debug("unreadable %s row: %r", desc, exc)
                out.drops["unparseable"] += 1
                continue
            row = len(out.messages)
            tools = prepared.tools
            out.messages.append(prepared.messages)
            out.tools.append(tools)
            out.keys.append(prepared.key)
            if tools not in out.tool_lists:
                out.tool_lists[tools] = prepared.schemas
            for name, args in prepared.calls:
                out.call_rows.append(row)
                out.call_names.append(name)
                out.call_args.append(args)
    return out


# Set before forking workers, so they read the lines from inherited memory instead of a pickle.
_SHARED: tuple[str, Sequence[str], bool, str] | None = None


def _read_shared(task: tuple[int, int, int]) -> _Chunk:
    assert _SHARED is not None
    kind, lines, keep_dots, desc = _SHARED
    start, end, position = task
    return _read_chunk(kind, lines[start:end], cached_parsers(keep_dots), desc, position)


def normalize_source(kind: str, lines: Sequence[str], parsers: Parsers, desc: str = "",
                     workers: int = 1) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, Counter[str]]:
    """Per-row reading: (rows: row, messages, tools, key, tools_id), (calls: row, name, arguments),
    (tool table: tools_id, name, schema for each distinct tools JSON), drops.

    Rows carry ``tools_id`` (one per distinct tools JSON) so joins run on integers, not long text.
    With ``workers`` > 1 the lines are read in that many forked processes (contiguous chunks,
    merged in order, so the result is the same as with one).
    """
    global _SHARED
    n = len(lines)
    if workers > 1 and n >= 2000 and "fork" in multiprocessing.get_all_start_methods():
        _SHARED = (kind, lines, parsers.keep_dots, desc)
        tasks = [(i * n // workers, (i + 1) * n // workers, i) for i in range(workers)]
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                chunks = pool.map(_read_shared, tasks)
        finally:
            _SHARED = None
    else:
        chunks = [_read_chunk(kind, lines, parsers, desc)]

    tool_ids: dict[str, int] = {}
    tool_lists: dict[str, tuple[tuple[str, str], ...]] = {}
    drops: Counter[str] = Counter()
    messages: list[str] = []
    tools: list[str] = []
    keys: list[int] = []
    call_rows: list[int] = []
    for chunk in chunks:
        offset = len(messages)
        messages += chunk.messages
        tools += chunk.tools
        keys += chunk.keys
        call_rows += [offset + r for r in chunk.call_rows]
        drops.update(chunk.drops)
        for t, schemas in chunk.tool_lists.items():
            if t not in tool_ids:
                tool_ids[t] = len(tool_ids)
                tool_lists[t] = schemas
    rows = pl.DataFrame(
        {"row": np.arange(len(messages), dtype=np.int64), "messages": messages, "tools": tools,
         "key": np.array(keys, dtype=np.uint64), "tools_id": [tool_ids[t] for t in tools]},
        schema={"row": pl.Int64, "messages": pl.String, "tools": pl.String, "key": pl.UInt64, "tools_id": pl.Int64},
    )
    calls_df = pl.DataFrame(
        {"row": call_rows, "name": [x for c in chunks for x in c.call_names],
         "arguments": [x for c in chunks for x in c.call_args]},
        schema={"row": pl.Int64, "name": pl.String, "arguments": pl.String},
    )
    tool_table = pl.DataFrame(
        {"tools_id": [tool_ids[t] for t, schemas in tool_lists.items() for _ in schemas],
         "name": [n for s in tool_lists.values() for n, _ in s],
         "schema": [k for s in tool_lists.values() for _, k in s]},
        schema={"tools_id": pl.Int64, "name": pl.String, "schema": pl.String},
    )
    return rows, calls_df, tool_table, drops


# ----------------------------------------------------------------------------------------------
# Table rules a row passes or fails on its own


def _check_schemas(table: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Add schema_id and schema_ok to the tool table; each distinct schema is checked once.

    Returns the table and the distinct schemas (index = schema_id), so later joins and the
    distinct (schema, arguments) pairs run on integers instead of the long schema texts.
    """
    distinct = table.get_column("schema").unique(maintain_order=True).to_list()
    valid = pl.DataFrame({"schema": distinct, "schema_id": np.arange(len(distinct), dtype=np.int64),
                          "schema_ok": [schema_ok(s) for s in distinct]},
                         schema={"schema": pl.String, "schema_id": pl.Int64, "schema_ok": pl.Boolean})
    return table.join(valid, on="schema", how="left").drop("schema"), distinct


def _arguments_ok(schema_ids: list[int], arguments: list[str], schemas: list[str]) -> list[bool]:
    """Validity of each (schema_id, arguments) pair of valid schemas; one validator lookup per schema."""
    checks: dict[int, Callable[[Any], bool]] = {}
    out = []
    for i, a in zip(schema_ids, arguments):
        check = checks.get(i)
        if check is None:
            check = checks[i] = compiled_validator(schemas[i])
        out.append(check(arguments_value(a)))
    return out


def check_rows(rows: pl.DataFrame, calls: pl.DataFrame, tool_table: pl.DataFrame,
               max_chars: int) -> tuple[pl.DataFrame, Counter[str]]:
    """The table rules a row passes or fails on its own, in RULES order: bad_tool_schema,
    unknown_tool, invalid_arguments, too_long. Returns the rows that pass and the drops."""
    tool_table, schemas = _check_schemas(tool_table)
    bad_schema_lists = tool_table.filter(~pl.col("schema_ok")).get_column("tools_id").unique()
    calls = (calls.join(rows.select("row", "tools_id"), on="row", how="left")
             .join(tool_table, on=["tools_id", "name"], how="left"))
    unknown_rows = calls.filter(pl.col("schema_id").is_null()).get_column("row").unique()
    pairs = calls.filter(pl.col("schema_ok").fill_null(False)).select("schema_id", "arguments").unique()
    pair_ok = pairs.with_columns(args_ok=pl.Series(
        _arguments_ok(pairs.get_column("schema_id").to_list(), pairs.get_column("arguments").to_list(), schemas),
        dtype=pl.Boolean))
    invalid_rows = (calls.join(pair_ok, on=["schema_id", "arguments"], how="inner")
                    .filter(~pl.col("args_ok")).get_column("row").unique())
    reason = (
        pl.when(pl.col("tools_id").is_in(bad_schema_lists.implode())).then(pl.lit("bad_tool_schema"))
        .when(pl.col("row").is_in(unknown_rows.implode())).then(pl.lit("unknown_tool"))
        .when(pl.col("row").is_in(invalid_rows.implode())).then(pl.lit("invalid_arguments"))
        .when(pl.col("messages").str.len_chars() + pl.col("tools").str.len_chars() > max_chars)
        .then(pl.lit("too_long"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    rows = rows.with_columns(reason=reason)
    drops: Counter[str] = Counter(
        {r: n for r, n in rows.filter(pl.col("reason").is_not_null()).group_by("reason").len().iter_rows()})
    return rows.filter(pl.col("reason").is_null()).drop("reason"), drops


# ----------------------------------------------------------------------------------------------
# Rules that need every row of a source


def deduplicate_and_cap(passed: pl.DataFrame, calls: pl.DataFrame,
                        max_rows_per_function: int | None) -> tuple[pl.DataFrame, Counter[str]]:
    """Exact duplicates, then the per-function cap, over all rows that passed the per-row rules.
    Returns kept rows (messages, tools, key) sorted by key, and the drops."""
    drops: Counter[str] = Counter()
    # Exact duplicates are identical, so which copy survives cannot change the output. Equal rows
    # have equal content keys, so only rows sharing a key are compared by their (long) texts.
    shared_key = pl.col("key").is_duplicated()
    unique = pl.concat([passed.filter(~shared_key),
                        passed.filter(shared_key).unique(subset=["messages", "tools"], keep="any")]
                       ).sort("key", "messages")
    drops["duplicate"] += passed.height - unique.height

    if max_rows_per_function is not None and unique.height:
        # Rank each function's rows by content hash (order-independent); a row over the cap for
        # any function it calls is dropped. Dropped rows still hold their rank, as in the baseline.
        per_fn = (calls.select("row", "name").unique()
                  .join(unique.select("row", "key", "messages"), on="row", how="inner")
                  .sort("name", "key", "messages")
                  .with_columns(rank=pl.int_range(pl.len()).over("name")))
        over = per_fn.filter(pl.col("rank") >= max_rows_per_function).get_column("row").unique()
        capped = unique.filter(~pl.col("row").is_in(over.implode()))
        drops["function_cap"] += unique.height - capped.height
        unique = capped
    return unique.select("messages", "tools", "key"), drops


def apply_rules(rows: pl.DataFrame, calls: pl.DataFrame, tool_table: pl.DataFrame, max_chars: int,
                max_rows_per_function: int | None) -> tuple[pl.DataFrame, Counter[str]]:
    """The table rules, in RULES order from bad_tool_schema on. Returns kept rows and drops."""
    passed, drops = check_rows(rows, calls, tool_table, max_chars)
    kept, source_drops = deduplicate_and_cap(passed, calls, max_rows_per_function)
    drops.update(source_drops)
    return kept, drops


def filter_source(kind: str, lines: Sequence[str], parsers: Parsers, max_chars: int,
                  max_rows_per_function: int | None, desc: str = "", workers: int = 1) -> tuple[pl.DataFrame, Counter[str]]:
    """Normalize and filter one source; kept rows (messages, tools, key) sorted by key."""
    with _no_cyclic_gc():
        rows, calls, tool_table, drops = normalize_source(kind, lines, parsers, desc, workers)
        kept, table_drops = apply_rules(rows, calls, tool_table, max_chars, max_rows_per_function)
    drops.update(table_drops)
    return kept, drops


# ----------------------------------------------------------------------------------------------
# Splitting and mixing


def _unit(keys: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per key (splitmix64 of key ^ salt)."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _salt(seed: int, *parts: str) -> int:
    return (seed * 0x100000001B3) ^ zlib.crc32("/".join(parts).encode())


def split_validation(kept: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split by content hash, before any repetition, so no row is in both splits."""
    is_val = _unit(kept.get_column("key").to_numpy(), _salt(seed, "validation")) < fraction
    mask = pl.Series(is_val)
    return kept.filter(~mask), kept.filter(mask)


def mix(frame: pl.DataFrame, ratio: float, seed: int, stage: str, source: str, repeat: bool) -> pl.DataFrame:
    """Apply a ratio: floor(ratio) copies plus a seeded fraction. Validation (repeat=False) only subsamples."""
    if not repeat:
        ratio = min(ratio, 1.0)
    full = math.floor(ratio)
    keys = frame.get_column("key").to_numpy()
    extra = _unit(keys, _salt(seed, stage, source, "mix")) < (ratio - full)
    copies = pl.Series("copies", full + extra.astype(np.int64))
    out = (frame.with_columns(copies).filter(pl.col("copies") > 0)
           .with_columns(copy=pl.int_ranges(0, pl.col("copies"))).explode("copy").drop("copies"))
    return out.with_columns(source=pl.lit(source))


def shuffle(frame: pl.DataFrame, seed: int, stage: str, split: str) -> pl.DataFrame:
    keys = frame.get_column("key").to_numpy()
    copy = frame.get_column("copy").to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = keys ^ (copy * np.uint64(0xD6E8FEB86659FD93))
    order = pl.Series("order", _unit(mixed, _salt(seed, stage, split, "order")))
    return frame.with_columns(order).sort("order", "source", "messages", "copy").drop("order")


def write_jsonl(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for messages, tools, source in frame.select("messages", "tools", "source").iter_rows():
            fh.write(json.dumps({"messages": messages, "tools": tools, "source": source}, ensure_ascii=False))
            fh.write("\n")


# ----------------------------------------------------------------------------------------------
# The stage


def run(cfg: FilterConfig) -> dict:
    raw_dir, out_dir = Path(cfg.raw_dir), Path(cfg.out_dir)
    missing = [name for name in cfg.sources if not (raw_dir / f"{name}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"filter: no raw file for source(s) {missing} in {raw_dir} (run the raw stage)")
    parsers = cached_parsers(cfg.keep_dots)
    metrics: dict = {"sources": {}, "dropped": {}, "outputs": {}}
    splits: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}
    total: Counter[str] = Counter()
    for name, kind in sorted(cfg.sources.items()):
        lines = read_lines(raw_dir / f"{name}.jsonl")
        kept, drops = filter_source(kind, lines, parsers, cfg.max_chars, cfg.max_rows_per_function, desc=name,
                                    workers=cfg.workers)
        train, val = split_validation(kept, cfg.validation_fraction, cfg.seed)
        splits[name] = (train, val)
        total.update(drops)
        metrics["sources"][name] = {
            "kind": kind, "rows_in": len(lines), "rows_out": kept.height,
            "dropped": {rule: drops.get(rule, 0) for rule in RULES},
        }
        log.info("%s (%s): %d rows in, %d kept, dropped %s", name, kind, len(lines), kept.height,
                 dict(sorted((r, n) for r, n in drops.items() if n)))
    metrics["dropped"] = {rule: total.get(rule, 0) for rule in RULES}
    for stage in STAGES:
        ratios = getattr(cfg.mix, stage)
        for split_index, split in enumerate(("train", "validation")):
            parts = [mix(splits[name][split_index], ratio, cfg.seed, stage, name, repeat=split == "train")
                     for name, ratio in sorted(ratios.items())]
            frame = (pl.concat(parts) if parts else
                     pl.DataFrame(schema={"messages": pl.String, "tools": pl.String, "key": pl.UInt64,
                                          "copy": pl.Int64, "source": pl.String}))
            frame = shuffle(frame, cfg.seed, stage, split)
            path = out_dir / stage / f"{split}.jsonl"
            write_jsonl(frame, path)
            metrics["outputs"][f"{stage}/{split}"] = {
                "rows": frame.height,
                "per_source": {name: int(n) for name, n in sorted(frame.group_by("source").len().iter_rows())},
            }
            log.info("wrote %s: %d rows", path, frame.height)
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
