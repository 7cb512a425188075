"""Filter throughput: the polars stage path against the plain row-by-row baseline, in one run.

    python -m bench filter [--rows 200000] [--baseline-rows 20000] [--workers 1] [--json out.json]

Rows are synthetic raw rows of every kind (stages/synthetic/), mixed like the default sources. They
are generated once per run (one process per kind, at most ``--gen-processes`` at a time) into a
temporary directory, read back with the stage's own reader, and deleted at the end: nothing is
carried over between runs.

Measured, each with wall-clock time and CPU time (this process and its children):
- the polars path (stages.filter.filter_source: normalize + rules + dedup + cap) on N and 2N
  rows: the throughput and the time growth N -> 2N;
- the row-by-row baseline (bench/filter_rowwise.py) on the first ``--baseline-rows`` of the same
  rows, together with the polars path on exactly that slice.

The baseline's list-based dedup is quadratic, so on all N rows it would run for hours; its rows/s
on the smaller slice is therefore an upper bound of its rows/s on N rows, and the headline ratio
(polars rows/s on N against baseline rows/s on the slice) understates the real gap. The same-slice
ratio is printed too. Every polars run starts with empty caches (parsers and compiled schema
validators). Reading and writing JSONL and the final mixing are in neither timing.

On a shared machine wall-clock ratios move with the load of other processes (the load average is
printed at the start and the end); CPU-time ratios move much less.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.filter_rowwise import filter_rowwise
from stages.filter import filter_source, read_lines
from stages.parsing.parsers import cached_parsers
from stages.schema_validator import compiled_validator

# Share of each kind in the benchmark input (the default params' sources: 2:2:1:2:1).
SHARES = {"hermes_fc": 0.25, "toolace": 0.25, "fc_zh_hard": 0.125, "openhermes": 0.25, "wildchat": 0.125}
MAX_CHARS = 16000
CAP = 200


def _generate_file(task: tuple[str, int, int, str]) -> tuple[str, float]:
    from stages.synthetic.generator import generate_rows

    kind, n, seed, path = task
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in generate_rows(kind, n, seed):
            fh.write(json.dumps(row, ensure_ascii=False))  # as the raw stage writes them
            fh.write("\n")
    return kind, time.perf_counter() - t0


def make_input(rows: int, seed: int, directory: Path, processes: int = 2) -> dict[str, list[str]]:
    """``rows`` raw lines split over the kinds by SHARES, generated into ``directory`` and read back."""
    tasks = [(kind, round(rows * share), seed, str(directory / f"{kind}.jsonl")) for kind, share in SHARES.items()]
    # Largest first, so the processes finish at about the same time.
    tasks.sort(key=lambda t: -t[1])
    if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            done = dict(pool.imap_unordered(_generate_file, tasks))
    else:
        done = dict(map(_generate_file, tasks))
    out = {}
    for kind, n, _, path in sorted(tasks, key=lambda t: list(SHARES).index(t[0])):
        out[kind] = read_lines(Path(path))
        print(f"  generated {n:>7} {kind} rows in {done[kind]:5.1f} s", flush=True)
    return out


def head(data: dict[str, list[str]], fraction: float) -> dict[str, list[str]]:
    return {kind: lines[: round(len(lines) * fraction)] for kind, lines in data.items()}


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process and its children)


def _clock() -> Timing:
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _since(start: Timing) -> Timing:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def run_polars(data: dict[str, list[str]], workers: int = 1,
               rows: bool = False) -> tuple[Timing, dict[str, list[tuple[str, str]]], Counter[str]]:
    """Timed: the stage's own product, a kept-rows frame per source. Turning the frames into Python
    tuples (only needed to compare with the baseline) happens after the clock stops."""
    gc.collect()
    compiled_validator.cache_clear()  # module-level: would otherwise carry over from the previous run
    parsers = cached_parsers()  # fresh caches: nothing carried over between runs
    frames = {}
    drops: Counter[str] = Counter()
    start = _clock()
    for kind, lines in data.items():
        frames[kind], d = filter_source(kind, lines, parsers, MAX_CHARS, CAP, desc=kind, workers=workers)
        drops.update(d)
    timing = _since(start)
    kept = {kind: [(m, t) for m, t, _ in frame.iter_rows()] for kind, frame in frames.items()} if rows else {}
    return timing, kept, drops


def run_baseline(data: dict[str, list[str]]) -> tuple[Timing, dict[str, list[tuple[str, str]]], Counter[str]]:
    gc.collect()
    kept: dict[str, list[tuple[str, str]]] = {}
    drops: Counter[str] = Counter()
    start = _clock()
    for kind, lines in data.items():
        k, d = filter_rowwise(kind, lines, False, MAX_CHARS, CAP)
        kept[kind] = k
        drops.update(d)
    return _since(start), kept, drops


def _line(label: str, rows: int, timing: Timing) -> str:
    wall, cpu = timing
    return (f"{label:<22} {rows:>8} rows: {wall:7.1f} s wall {rows / wall:9.0f} rows/s | "
            f"{cpu:7.1f} s CPU {rows / cpu:9.0f} rows/CPU-s")


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench filter", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="N (the polars path also runs 2N)")
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="rows the baseline runs on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="also time the polars path with this many reading processes on N rows (1: skip)")
    parser.add_argument("--gen-processes", type=int, default=2, help="processes generating the input")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bench_start = time.perf_counter()
    load_start = _load()
    print(f"load average (1/5/15 min) at start: {load_start}, {os.cpu_count()} CPUs", flush=True)
    n = args.rows
    print(f"generating {2 * n} synthetic raw rows ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp:
        big = make_input(2 * n, args.seed, Path(tmp), args.gen_processes)
    data_n = head(big, 0.5)
    rows_n = sum(map(len, data_n.values()))
    rows_2n = sum(map(len, big.values()))
    sub = head(data_n, min(1.0, args.baseline_rows / max(rows_n, 1)))
    rows_sub = sum(map(len, sub.values()))
    gc.freeze()  # the input stays alive throughout: keep the collector from rescanning it

    t_sub, kept_sub, drops_sub = run_polars(sub, rows=True)
    print(_line("polars, 1 process", rows_sub, t_sub), flush=True)
    t_base, kept_base, drops_base = run_baseline(sub)
    print(_line("row-by-row baseline", rows_sub, t_base), flush=True)
    same = kept_sub == kept_base and +drops_sub == +drops_base
    del kept_sub, kept_base
    t_n, _, drops_n = run_polars(data_n)
    print(_line("polars, 1 process", rows_n, t_n), flush=True)
    t_2n, _, _ = run_polars(big)
    print(_line("polars, 1 process", rows_2n, t_2n), flush=True)
    t_nw = None
    if args.workers > 1:
        t_nw, _, _ = run_polars(data_n, args.workers)
        print(_line(f"polars, {args.workers} processes", rows_n, t_nw), flush=True)

    def rate(rows: int, timing: Timing, which: int) -> float:
        return rows / timing[which]

    def ratios(rows: int, timing: Timing) -> dict[str, float]:
        """Throughput ratio against the baseline, by wall clock and by CPU time."""
        return {clock: rate(rows, timing, i) / rate(rows_sub, t_base, i) for i, clock in enumerate(("wall", "cpu"))}

    result = {
        "rows_n": rows_n, "rows_2n": rows_2n, "baseline_rows": rows_sub,
        "seconds": {"polars_slice": t_sub, "baseline_slice": t_base, "polars_n": t_n, "polars_2n": t_2n},
        "rows_per_s": {
            clock: {"polars_n": rate(rows_n, t_n, i), "polars_2n": rate(rows_2n, t_2n, i),
                    "polars_slice": rate(rows_sub, t_sub, i), "baseline_slice": rate(rows_sub, t_base, i)}
            for i, clock in enumerate(("wall", "cpu"))},
        "ratio_polars_n_vs_baseline": ratios(rows_n, t_n),
        "ratio_same_slice": ratios(rows_sub, t_sub),
        "time_growth_2n_over_n": {"wall": t_2n[0] / t_n[0], "cpu": t_2n[1] / t_n[1]},
        "same_kept_rows_and_drops": same,
        "drops_n": dict(sorted(drops_n.items())),
        "load_average_start": load_start,
    }
    if t_nw is not None:
        result["workers"] = args.workers
        result["seconds"]["polars_n_workers"] = t_nw
        result["ratio_polars_n_workers_vs_baseline"] = ratios(rows_n, t_nw)
    result["load_average_end"] = _load()
    result["bench_seconds"] = time.perf_counter() - bench_start
    head_ratio, slice_ratio, growth = (result["ratio_polars_n_vs_baseline"], result["ratio_same_slice"],
                                       result["time_growth_2n_over_n"])
    print()
    print(f"speed-up, polars (1 process) on {rows_n} rows vs baseline on {rows_sub}: "
          f"{head_ratio['cpu']:.1f}x CPU, {head_ratio['wall']:.1f}x wall (target >= 20x)")
    print(f"speed-up on the same {rows_sub}-row slice: {slice_ratio['cpu']:.1f}x CPU, {slice_ratio['wall']:.1f}x wall")
    if t_nw is not None:
        w = result["ratio_polars_n_workers_vs_baseline"]
        print(f"speed-up with {args.workers} reading processes: {w['cpu']:.1f}x CPU, {w['wall']:.1f}x wall")
    print(f"time growth N -> 2N (polars): {growth['cpu']:.2f}x CPU, {growth['wall']:.2f}x wall (target <= 2.2x)")
    print(f"baseline and polars kept the same rows with the same drops: {same}")
    print(f"load average at start {load_start}, at end {result['load_average_end']}; "
          f"whole benchmark {result['bench_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
    return result


if __name__ == "__main__":
    main()
