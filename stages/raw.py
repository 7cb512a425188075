"""Stage ``raw``: one JSONL file per declared source, in that source's own hub schema.

    python -m stages.raw [--params params.yaml]

Each source in ``params.yaml`` (section ``raw``) has a kind (the schema its rows follow) and an
origin: ``synthetic`` (the offline, seeded generator in ``stages/synthetic/``), ``hub`` (a pinned
revision loaded with ``datasets.load_dataset``, for machines that reach the Hugging Face hub) or
``local`` (a ``.json`` array, ``.jsonl`` or ``.parquet`` file). Output:
``<output_dir>/<source>.jsonl``, one row per line, ``ensure_ascii=False``, keys in the source's
order. This module does not import torch (``datasets`` is imported only for hub origins).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from tqdm import tqdm

from stages.config import StrictModel, load_section, log_config, setup_logging, stage_argparser
from stages.kinds import Kind
from stages.synthetic.generator import iter_samples

log = logging.getLogger("stages.raw")


class SyntheticOrigin(StrictModel):
    type: Literal["synthetic"]
    rows: int = Field(ge=0, description="number of rows to generate")
    seed: int = Field(description="same seed and params give byte-identical files")
    malformed_fraction: float = Field(ge=0.0, le=1.0, description="share of deliberately broken rows")


class HubOrigin(StrictModel):
    type: Literal["hub"]
    dataset: str = Field(description="hub dataset id, e.g. Team-ACE/ToolACE")
    config: str | None = Field(description="dataset config name, or null for the default")
    split: str
    revision: str = Field(description="pinned commit sha or tag, so reruns read the same data")
    max_rows: int | None = Field(default=None, ge=0, description="keep only the first N rows (null: all)")


class LocalOrigin(StrictModel):
    type: Literal["local"]
    path: str = Field(description=".json (array), .jsonl or .parquet file")
    max_rows: int | None = Field(default=None, ge=0, description="keep only the first N rows (null: all)")


Origin = Annotated[SyntheticOrigin | HubOrigin | LocalOrigin, Field(discriminator="type")]


class Source(StrictModel):
    kind: Kind
    origin: Origin


class RawConfig(StrictModel):
    output_dir: str
    sources: dict[str, Source]

    @field_validator("sources")
    @classmethod
    def _names_are_file_names(cls, sources: dict[str, Source]) -> dict[str, Source]:
        for name in sources:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"source name {name!r} must be a plain file name (letters, digits, _ . -)")
        if not sources:
            raise ValueError("at least one source is required")
        return sources


def _json_default(value: Any) -> Any:
    # Hub rows carry datetimes (WildChat timestamps); JSONL stores them as ISO strings.
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def _limit(rows: Iterable[dict[str, Any]], max_rows: int | None) -> Iterator[dict[str, Any]]:
    # islice pulls exactly max_rows items, so a streamed source reads nothing past them.
    return iter(rows) if max_rows is None else itertools.islice(rows, max_rows)


def hub_rows(origin: HubOrigin) -> Iterator[dict[str, Any]]:
    """Rows of a pinned hub revision, streamed (nothing in a home-directory cache, and only the rows
    kept are read). Needs network access to the hub; ``datasets`` is imported lazily.

    ``datasets`` streams parquet files batch by batch; a data file that is one JSON array (ToolACE,
    OpenHermes-2.5) it still parses whole, once per run.
    """
    import datasets  # heavy, and only hub origins need it

    ds = datasets.load_dataset(origin.dataset, origin.config, split=origin.split, revision=origin.revision,
                               streaming=True)
    return _limit(iter(ds), origin.max_rows)


def local_rows(origin: LocalOrigin) -> Iterator[dict[str, Any]]:
    """Rows of a local file, read incrementally (memory holds a batch, not the file). Lines or items
    that are not JSON objects are skipped and counted."""
    path = Path(origin.path)
    if not path.is_file():
        raise FileNotFoundError(f"local source file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows: Iterable[dict[str, Any]] = _parquet_rows(path)
    elif suffix == ".jsonl":
        rows = _jsonl_objects(path)
    elif suffix == ".json":
        rows = _objects_only(json_array_items(path), str(path))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")
    return _limit(rows, origin.max_rows)


def _parquet_rows(path: Path, batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()


def json_array_items(path: Path, block_chars: int = 1 << 20) -> Iterator[Any]:
    """The items of a file holding one JSON array, decoded one at a time (the same values as
    ``json.load``), so memory holds one item and a block of text, not the whole file."""
    with path.open(encoding="utf-8") as fh:
        text = _TextWindow(fh, block_chars)
        if text.next_char() != "[":
            raise ValueError(f"{path}: a .json source must hold a JSON array of rows")
        text.at += 1
        if text.next_char() != "]":
            while True:
                yield text.decode()
                separator = text.next_char()
                if separator != ",":
                    break
                text.at += 1
        if text.next_char() != "]":
            raise ValueError(f"{path}: the JSON array is not closed properly")
        text.at += 1
        if text.next_char():
            raise ValueError(f"{path}: extra data after the JSON array")


class _TextWindow:
    """A window on a text file read block by block: ``buffer[at:]`` is what is left to parse."""

    _DECODER = json.JSONDecoder()
    _SPACE = frozenset(" \t\n\r")
    _AFTER_VALUE = frozenset(" \t\n\r,]")

    def __init__(self, fh: Any, block_chars: int) -> None:
        self.fh, self.block_chars = fh, block_chars
        self.buffer, self.at, self.eof = "", 0, False

    def _read_more(self) -> None:
        self.buffer = self.buffer[self.at:]
        self.at = 0
        more = self.fh.read(self.block_chars)
        self.eof = not more
        self.buffer += more

    def next_char(self) -> str:
        """The next character that is not JSON whitespace ("" at the end of the file)."""
        while True:
            while self.at < len(self.buffer) and self.buffer[self.at] in self._SPACE:
                self.at += 1
            if self.at < len(self.buffer) or self.eof:
                return self.buffer[self.at:self.at + 1]
            self._read_more()

    def decode(self) -> Any:
        """The JSON value at ``at``; reads on while it may be cut by the end of the window (a
        number may go on), doubling the block each time so one huge item costs linear time."""
        self.next_char()
        while True:
            try:
                value, end = self._DECODER.raw_decode(self.buffer, self.at)
            except json.JSONDecodeError:
                if self.eof:
                    raise
                end = len(self.buffer)
            # Complete only if something other than the value follows it: "12" may be "123",
            # "4.5" may be "4.5e3" (an invalid follower is the caller's error to report).
            if self.eof or (end < len(self.buffer) and self.buffer[end] in self._AFTER_VALUE):
                self.at = end
                return value
            self.block_chars *= 2
            self._read_more()


def _objects_only(items: Iterable[Any], where: str) -> Iterator[dict[str, Any]]:
    skipped = 0
    for item in items:
        if isinstance(item, dict):
            yield item
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d items that are not JSON objects", where, skipped)


def _jsonl_objects(path: Path) -> Iterator[dict[str, Any]]:
    skipped = 0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(item, dict):
                yield item
            else:
                skipped += 1
    if skipped:
        log.warning("%s: skipped %d lines that are not JSON objects", path, skipped)


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path, desc: str, total: int | None = None) -> int:
    """Write rows atomically (a temporary file renamed at the end); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            for row in tqdm(rows, desc=desc, total=total, unit="row", leave=False, mininterval=1.0):
                fh.write(json.dumps(row, ensure_ascii=False, default=_json_default))
                fh.write("\n")
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def build_source(name: str, source: Source, output_dir: Path) -> int:
    out = output_dir / f"{name}.jsonl"
    origin = source.origin
    if isinstance(origin, SyntheticOrigin):
        defects: Counter[str] = Counter()

        def rows() -> Iterator[dict[str, Any]]:
            for sample in iter_samples(source.kind, origin.rows, origin.seed, origin.malformed_fraction):
                if sample.defect:
                    defects[sample.defect] += 1
                yield sample.row

        count = write_jsonl(rows(), out, name, total=origin.rows)
        log.info("%s: %d synthetic %s rows (seed %d), %d malformed on purpose: %s", name, count, source.kind,
                 origin.seed, sum(defects.values()), json.dumps(dict(sorted(defects.items()))))
    elif isinstance(origin, HubOrigin):
        count = write_jsonl(hub_rows(origin), out, name)
        log.info("%s: %d %s rows from hub %s (config %s, split %s, revision %s)", name, count, source.kind,
                 origin.dataset, origin.config, origin.split, origin.revision)
    else:
        count = write_jsonl(local_rows(origin), out, name)
        log.info("%s: %d %s rows from %s", name, count, source.kind, origin.path)
    return count


def run(config: RawConfig) -> dict[str, int]:
    output_dir = Path(config.output_dir)
    counts = {name: build_source(name, source, output_dir) for name, source in config.sources.items()}
    log.info("raw rows per source: %s (total %d)", json.dumps(counts), sum(counts.values()))
    return counts


def main(argv: list[str] | None = None) -> None:
    args = stage_argparser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    config = load_section("raw", RawConfig, args.params)
    log_config("raw", config)
    counts = run(config)
    for name, n in counts.items():
        print(f"{name}: {n} rows -> {Path(config.output_dir) / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
