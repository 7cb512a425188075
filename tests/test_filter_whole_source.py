"""The filter's whole-source rules (polars): ties on a shared content key, empty sources, the cap's
ranks, and an order that does not depend on polars' thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl

from stages.filter import ROWS, FilteredSource, deduplicate_and_cap, mix_and_shuffle, split_validation
from stages.filter_store import SpilledRows
from stages.row_pipeline import EncodedRow

ROOT = Path(__file__).resolve().parents[1]


def make_source(path: Path, rows: list[tuple[str, str, int, list[str]]], cap: int | None = None) -> FilteredSource:
    """A filtered source from (messages, tools, content key, called functions) rows, in that order."""
    store = SpilledRows(path)
    store.add([EncodedRow(m.encode(), t.encode(), [(f, "{}") for f in calls], (), key, ())
               for m, t, key, calls in rows])
    store.finish()
    kept, drops = deduplicate_and_cap(store, cap)
    return FilteredSource(store, kept, len(rows), drops)


def texts(source: FilteredSource) -> list[tuple[str, str]]:
    return list(source.rows())


def test_entries_sharing_a_hash_are_ordered_by_source_messages_copy_then_row(tmp_path):
    # Rows 0-2 share their content key (a collision): each copy of them gets the same position.
    # Rows 1 and 2 have the same messages (their tools differ), so only the copy and then the
    # row's place in the source tell them apart.
    a = make_source(tmp_path / "a.spill", [("[b]", "[]", 7, []), ("[a]", '[{"x":1}]', 7, []), ("[a]", "[]", 7, []),
                                          ("[c]", "[]", 9, [])])
    b = make_source(tmp_path / "b.spill", [("[0]", "[]", 7, [])])
    try:
        assert texts(a) == [("[a]", '[{"x":1}]'), ("[a]", "[]"), ("[b]", "[]"), ("[c]", "[]")]
        parts = {"a": (a, a.kept), "b": (b, b.kept)}
        names, mixed = mix_and_shuffle(parts, {"a": 3.0, "b": 1.0}, 5, "stage2", "train")
        assert names == ["a", "b"] and mixed.columns == ["source", "row", "copy"]
        assert mixed.height == 3 * 4 + 1
        entries = mixed.rows()
        for copy in range(3):
            # The four entries of key 7 and this copy, together: source a before b, then messages,
            # then (same messages) the row's place in the source's order.
            at = entries.index((0, 1, copy))
            expected = [(0, 1, copy), (0, 2, copy), (0, 0, copy)] + ([(1, 0, 0)] if copy == 0 else [])
            assert entries[at:at + len(expected)] == expected
        assert sorted(entries) == sorted({(0, r, c) for r in range(4) for c in range(3)} | {(1, 0, 0)})
        # The same call again gives the same order.
        assert mix_and_shuffle(parts, {"a": 3.0, "b": 1.0}, 5, "stage2", "train")[1].equals(mixed)
    finally:
        a.close()
        b.close()


def test_empty_sources_and_an_empty_mix(tmp_path):
    empty = make_source(tmp_path / "e.spill", [], cap=1)
    one = make_source(tmp_path / "o.spill", [("[1]", "[]", 3, ["f"])], cap=1)
    try:
        assert empty.kept.schema == pl.Schema(ROWS) and empty.height == 0 and +empty.drops == Counter()
        assert empty.fixed() == {"enum_null": 0} and texts(empty) == []
        train, validation = split_validation(empty, 0.5, 1)
        assert train.height == validation.height == 0 and train.schema == pl.Schema(ROWS)
        names, mixed = mix_and_shuffle({"e": (empty, train), "o": (one, one.kept)}, {"e": 4.0, "o": 2.0}, 1,
                                       "stage2", "train")
        assert names == ["e", "o"] and sorted(mixed.rows()) == [(1, 0, 0), (1, 0, 1)]
        names, mixed = mix_and_shuffle({}, {}, 1, "stage1", "validation")
        assert names == [] and mixed.height == 0 and mixed.columns == ["source", "row", "copy"]
        # A ratio of 0 and a validation split (never repeated) give no entry or one per row.
        assert mix_and_shuffle({"o": (one, one.kept)}, {"o": 0.0}, 1, "stage2", "train")[1].height == 0
        assert mix_and_shuffle({"o": (one, one.kept)}, {"o": 3.0}, 1, "stage2", "validation")[1].rows() == [(0, 0, 0)]
    finally:
        empty.close()
        one.close()


def test_the_cap_ranks_by_content_and_a_dropped_row_keeps_its_rank(tmp_path):
    rows = [("[2]", "[]", 7, ["f"]),        # shares key 7 with the next row: ranked after it by messages
            ("[1]", "[]", 7, ["f"]),
            ("[1]", "[]", 7, ["f"]),        # a duplicate: gone before the cap ranks anything
            ("[3]", "[]", 8, ["g", "f"]),   # over f's cap, but still first in g's ranking
            ("[4]", "[]", 9, ["g"])]        # second in g's ranking: over a cap of 1
    source = make_source(tmp_path / "c.spill", rows, cap=1)
    try:
        assert texts(source) == [("[1]", "[]")]
        assert source.drops == Counter({"duplicate": 1, "function_cap": 3})
    finally:
        source.close()
    source = make_source(tmp_path / "c2.spill", rows, cap=2)
    try:
        assert texts(source) == [("[1]", "[]"), ("[2]", "[]"), ("[4]", "[]")]
        assert source.drops == Counter({"duplicate": 1, "function_cap": 1})
    finally:
        source.close()


# Many rows on few keys (collisions and duplicates in every group) through every whole-source rule;
# prints a digest of the kept rows, the split and the mixed order.
_DIGEST = """
import hashlib, sys
from pathlib import Path
from stages.filter import FilteredSource, deduplicate_and_cap, mix_and_shuffle, split_validation
from stages.filter_store import SpilledRows
from stages.row_pipeline import EncodedRow
store = SpilledRows(Path(sys.argv[1]))
n = 60_000
store.add([EncodedRow(f"[{i % 40_022}]".encode(), b"[]", [(f"f{i % 97}", "{}")] + [("g", "{}")] * (i % 50 == 0), (),
                      (i * 2_654_435_761) % 20_011, ()) for i in range(n)])
store.finish()
kept, drops = deduplicate_and_cap(store, 300)
source = FilteredSource(store, kept, n, drops)
train, validation = split_validation(source, 0.2, 3)
names, mixed = mix_and_shuffle({"s": (source, train), "t": (source, train)}, {"s": 2.5, "t": 1.0}, 3, "stage2", "train")
digest = hashlib.sha256()
for frame in (kept, train, validation, mixed):
    digest.update(frame.write_csv().encode())
print(sorted(drops.items()), mixed.height, digest.hexdigest())
store.close()
"""


def test_the_whole_source_rules_do_not_depend_on_polars_threads(tmp_path):
    def digest(threads: str) -> str:
        env = dict(os.environ, POLARS_MAX_THREADS=threads, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-c", _DIGEST, str(tmp_path / f"{threads}.spill")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    one = digest("1")
    assert "('duplicate', 19978)" in one and "('function_cap', " in one
    assert digest("8") == one
