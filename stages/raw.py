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
from stages.synthetic.generator import iter_samples, mixed_case_weights

log = logging.getLogger("stages.raw")


def _min_max(value: tuple[int, int]) -> tuple[int, int]:
    """A [min, max] range of counts: 1 <= min <= max."""
    if not 1 <= value[0] <= value[1]:
        raise ValueError(f"[min, max] with 1 <= min <= max, got {list(value)}")
    return value


class SessionShape(StrictModel):
    """The shape of generated environment sessions (session kinds only)."""

    functions: tuple[int, int] = Field(description="functions offered per session: [min, max]")
    turns: tuple[int, int] = Field(description="user turns per session: [min, max]")

    _range = field_validator("functions", "turns")(_min_max)


class ToolLists(StrictModel):
    """Longer tool lists for a share of generated cases (tool-offering kinds only)."""

    share: float = Field(ge=0.0, le=1.0, description="share of the well-formed cases whose list grows")
    tools: tuple[int, int] = Field(description="tools offered in a grown list, its own included: [min, max]")

    _range = field_validator("tools")(_min_max)


class SyntheticOrigin(StrictModel):
    type: Literal["synthetic"]
    rows: int = Field(ge=0, description="number of rows to generate")
    seed: int = Field(description="same seed and params give byte-identical files")
    malformed_fraction: float = Field(ge=0.0, le=1.0, description="share of deliberately broken rows")
    sessions: SessionShape | None = Field(default=None, description=(
        "session kinds: functions offered and user turns per session; null: the generator's defaults"))
    tool_lists: ToolLists | None = Field(default=None, description=(
        "tool-offering kinds: a share of the cases offered a longer tool list (other functions of the "
        "bank, none that fits); null: the cases' own lists (0-5 tools)"))
    case_weights: dict[str, float] | None = Field(default=None, description=(
        "tool-offering kinds: relative weights of the case types it names (single, parallel, multiple, "
        "parallel_multiple, irrelevance, general, missing_info, multi_turn, chain), the others keeping "
        "the generator's (stages/synthetic/cases.py CASE_WEIGHTS); null: the generator's weights"))

    @field_validator("case_weights")
    @classmethod
    def _known_case_types(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        mixed_case_weights(weights)  # raises on an unknown type, a negative weight or all zero
        return weights


class HubOrigin(StrictModel):
    type: Literal["hub"]
    dataset: str = Field(description="hub dataset id, e.g. Team-ACE/ToolACE")
    config: str | None = Field(description="dataset config name, or null for the default")
    split: str
    revision: str = Field(description="pinned commit sha or tag, so reruns read the same data")
    max_rows: int | None = Field(default=None, ge=0, description="keep only the first N rows (null: all)")
    data_file: str | None = Field(default=None, description=(
        "a file of the dataset repo to download at `revision` and read like a local origin (a .json "
        "array item by item, e.g. OpenHermes-2.5's openhermes2_5.json, which datasets would parse "
        "whole); null: the dataset through datasets' streaming"))


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
    metrics_file: str | None = Field(default=None, description=(
        "per source: rows written, rows made malformed on purpose, and generated sessions dropped "
        "(a call the environment refused, a replay that differed), by reason; null: not written"))

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


def hub_rows(origin: HubOrigin, download_dir: Path) -> Iterator[dict[str, Any]]:
    """Rows of a pinned hub revision, streamed (only the rows kept are read). Needs network access to
    the hub; ``datasets`` and ``huggingface_hub`` are imported lazily.

    Without ``data_file``, ``datasets`` streams the dataset (parquet batch by batch; nothing in a
    home-directory cache); it would parse a data file that is one JSON array whole. With it, that
    file is downloaded at the revision into ``download_dir`` and read item by item.
    """
    if origin.data_file is not None:
        return _limit(file_rows(download_data_file(origin, download_dir)), origin.max_rows)
    import datasets  # heavy, and only hub origins need it

    ds = datasets.load_dataset(origin.dataset, origin.config, split=origin.split, revision=origin.revision,
                               streaming=True)
    return _limit(iter(ds), origin.max_rows)


def download_data_file(origin: HubOrigin, download_dir: Path) -> Path:
    """``origin.data_file`` of the dataset repo at ``origin.revision``, downloaded (or found, if
    complete) under ``download_dir/<dataset>/<revision>/``."""
    from huggingface_hub import hf_hub_download  # only hub origins need it

    assert origin.data_file is not None
    local_dir = download_dir / origin.dataset.replace("/", "__") / origin.revision
    path = hf_hub_download(repo_id=origin.dataset, filename=origin.data_file, repo_type="dataset",
                           revision=origin.revision, local_dir=local_dir)
    return Path(path)


def local_rows(origin: LocalOrigin) -> Iterator[dict[str, Any]]:
    """Rows of a local file, read incrementally (see :func:`file_rows`)."""
    return _limit(file_rows(Path(origin.path)), origin.max_rows)


def file_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a .json (array), .jsonl or .parquet file, read incrementally (memory holds an item or
    a batch, not the file). Lines or items that are not JSON objects are skipped and counted."""
    if not path.is_file():
        raise FileNotFoundError(f"source file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows: Iterable[dict[str, Any]] = _parquet_rows(path)
    elif suffix == ".jsonl":
        rows = _jsonl_objects(path)
    elif suffix == ".json":
        rows = _objects_only(json_array_items(path), str(path))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")
    return iter(rows)


def _parquet_rows(path: Path, batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()


def json_array_items(path: Path, buffer_bytes: int = 1 << 16) -> Iterator[Any]:
    """The items of a file holding one JSON array, decoded one at a time by ijson's C parser (yajl),
    so memory holds one item and a buffer, not the file: the values ``json.load`` gives (text with
    lone surrogates, which has no UTF-8 form to write, reads as "?").

    yajl stops at integers beyond 64 bits and floats beyond a double's range, which ``json``
    reads; then the file is read again with ijson's pure-Python parser (exact, several times
    slower, and its buffer is not bounded), from the item where yajl stopped. An error from that
    parser is a file that is not a JSON array.
    """
    import ijson  # only .json sources need it

    with path.open("rb") as fh:
        start = fh.read(64).lstrip(b" \t\n\r")
        while not start:
            more = fh.read(1 << 16)
            if not more:
                break
            start = more.lstrip(b" \t\n\r")
    if start[:1] != b"[":
        raise ValueError(f"{path}: a .json source must hold a JSON array of rows")
    done = 0
    try:
        with path.open("rb") as fh:
            for item in ijson.items(fh, "item", use_float=True, buf_size=buffer_bytes):
                yield item
                done += 1
        return
    except ijson.JSONError:
        pass
    try:
        with path.open("rb") as fh:
            items = ijson.get_backend("python").items(fh, "item", use_float=True, buf_size=buffer_bytes)
            for item in itertools.islice(items, done, None):
                yield item
    except ijson.JSONError as exc:
        raise ValueError(f"{path}: not a well-formed JSON array ({exc})") from None


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


def build_source(name: str, source: Source, output_dir: Path) -> dict[str, Any]:
    """Write one source; returns its counts (rows, and for synthetic rows what was broken or dropped)."""
    out = output_dir / f"{name}.jsonl"
    origin = source.origin
    if isinstance(origin, SyntheticOrigin):
        defects: Counter[str] = Counter()
        dropped: Counter[str] = Counter()

        def rows() -> Iterator[dict[str, Any]]:
            shape = origin.sessions.model_dump() if origin.sessions is not None else None
            lists = origin.tool_lists.model_dump() if origin.tool_lists is not None else None
            for sample in iter_samples(source.kind, origin.rows, origin.seed, origin.malformed_fraction, dropped,
                                       shape, lists, origin.case_weights):
                if sample.defect:
                    defects[sample.defect] += 1
                yield sample.row

        count = write_jsonl(rows(), out, name, total=origin.rows)
        log.info("%s: %d synthetic %s rows (seed %d), %d malformed on purpose: %s", name, count, source.kind,
                 origin.seed, sum(defects.values()), json.dumps(dict(sorted(defects.items()))))
        if dropped:
            log.info("%s: %d generated sessions dropped: %s", name, sum(dropped.values()),
                     json.dumps(dict(sorted(dropped.items()))))
        return {"rows": count, "malformed": dict(sorted(defects.items())),
                "sessions_dropped": dict(sorted(dropped.items()))}
    elif isinstance(origin, HubOrigin):
        # Downloads go beside the outputs, in the stage's DVC-tracked output directory.
        count = write_jsonl(hub_rows(origin, output_dir / "hub"), out, name)
        log.info("%s: %d %s rows from hub %s (config %s, split %s, revision %s)", name, count, source.kind,
                 origin.dataset, origin.config, origin.split, origin.revision)
    else:
        count = write_jsonl(local_rows(origin), out, name)
        log.info("%s: %d %s rows from %s", name, count, source.kind, origin.path)
    return {"rows": count}


def run(config: RawConfig) -> dict[str, int]:
    output_dir = Path(config.output_dir)
    stats = {name: build_source(name, source, output_dir) for name, source in config.sources.items()}
    counts = {name: s["rows"] for name, s in stats.items()}
    log.info("raw rows per source: %s (total %d)", json.dumps(counts), sum(counts.values()))
    if config.metrics_file:
        path = Path(config.metrics_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sources": stats}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
