"""Filter throughput: the polars stage path against the plain row-by-row baseline, in one run.

    python -m bench filter [--rows 200000] [--baseline-rows 20000] [--json out.json]

Rows are synthetic raw rows of every kind (stages.synthetic), mixed like the default sources.
Measured: the polars path (stages.filter.filter_source: normalize + rules + dedup + cap) on N and
2N rows (time growth), and the row-by-row baseline (bench/filter_rowwise.py) on the first
``--baseline-rows`` of the same rows, together with the polars path on exactly that slice.

The baseline's list-based dedup is quadratic, so on all N rows it would run for hours; its rows/s
on the smaller slice is therefore an upper bound of its rows/s on N rows, and the headline ratio
(polars rows/s on N against baseline rows/s on the slice) understates the real gap. The same-slice
ratio is printed too. Reading and writing JSONL and the final mixing are not in either timing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from collections import Counter

from bench.filter_rowwise import filter_rowwise
from stages.filter import filter_source
from stages.normalize import cached_parsers

# Share of each kind in the benchmark input (the default params' sources: 2:2:1:2:1).
SHARES = {"hermes_fc": 0.25, "toolace": 0.25, "fc_zh_hard": 0.125, "openhermes": 0.25, "wildchat": 0.125}
MAX_CHARS = 16000
CAP = 200


def make_input(rows: int, seed: int) -> dict[str, list[str]]:
    from stages.synthetic import generate_rows

    out = {}
    for kind, share in SHARES.items():
        n = round(rows * share)
        t0 = time.perf_counter()
        out[kind] = [json.dumps(r, ensure_ascii=False) for r in generate_rows(kind, n, seed)]
        print(f"  generated {n:>7} {kind} rows in {time.perf_counter() - t0:5.1f} s", flush=True)
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


def run_polars(data: dict[str, list[str]], workers: int = 1) -> tuple[Timing, dict[str, list[tuple[str, str]]], Counter[str]]:
    gc.collect()
    parsers = cached_parsers()  # fresh caches: nothing carried over between runs
    kept: dict[str, list[tuple[str, str]]] = {}
    drops: Counter[str] = Counter()
    start = _clock()
    for kind, lines in data.items():
        frame, d = filter_source(kind, lines, parsers, MAX_CHARS, CAP, desc=kind, workers=workers)
        kept[kind] = [(m, t) for m, t, _ in frame.iter_rows()]
        drops.update(d)
    return _since(start), kept, drops


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
    return f"{label:<22} {rows:>8} rows: {wall:7.1f} s wall {rows / wall:9.0f} rows/s | {cpu:7.1f} s CPU {rows / cpu:9.0f} rows/CPU-s"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench filter", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="N (the polars path also runs 2N)")
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="rows the baseline runs on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="also time the polars path with this many reading processes on N rows (1: skip)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n = args.rows
    print(f"generating {2 * n} synthetic raw rows ...", flush=True)
    big = make_input(2 * n, args.seed)
    data_n = head(big, 0.5)
    rows_n = sum(map(len, data_n.values()))
    rows_2n = sum(map(len, big.values()))
    sub = head(data_n, min(1.0, args.baseline_rows / max(rows_n, 1)))
    rows_sub = sum(map(len, sub.values()))
    gc.freeze()  # the input stays alive throughout: keep the collector from rescanning it

    t_sub, kept_sub, drops_sub = run_polars(sub)
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

    result = {
        "rows_n": rows_n, "rows_2n": rows_2n, "baseline_rows": rows_sub,
        "wall": {"polars_rows_per_s_n": rate(rows_n, t_n, 0), "polars_rows_per_s_2n": rate(rows_2n, t_2n, 0),
                 "polars_rows_per_s_baseline_slice": rate(rows_sub, t_sub, 0),
                 "baseline_rows_per_s": rate(rows_sub, t_base, 0)},
        "ratio_polars_n_vs_baseline": rate(rows_n, t_n, 0) / rate(rows_sub, t_base, 0),
        "ratio_polars_n_vs_baseline_cpu": rate(rows_n, t_n, 1) / rate(rows_sub, t_base, 1),
        "ratio_same_slice": t_base[0] / t_sub[0],
        "time_growth_2n_over_n": t_2n[0] / t_n[0],
        "time_growth_2n_over_n_cpu": t_2n[1] / t_n[1],
        "same_kept_rows_and_drops": same,
        "drops_n": dict(sorted(drops_n.items())),
    }
    if t_nw is not None:
        result["workers"] = args.workers
        result["ratio_polars_n_workers_vs_baseline"] = rate(rows_n, t_nw, 0) / rate(rows_sub, t_base, 0)
    print()
    print(f"speed-up, polars (1 process) on {rows_n} rows vs baseline on {rows_sub}: "
          f"{result['ratio_polars_n_vs_baseline']:.1f}x wall, {result['ratio_polars_n_vs_baseline_cpu']:.1f}x CPU "
          f"(target >= 20x; same {rows_sub}-row slice: {result['ratio_same_slice']:.1f}x wall)")
    if t_nw is not None:
        print(f"speed-up with {args.workers} reading processes: {result['ratio_polars_n_workers_vs_baseline']:.1f}x wall")
    print(f"time growth N -> 2N (polars): {result['time_growth_2n_over_n']:.2f}x wall, "
          f"{result['time_growth_2n_over_n_cpu']:.2f}x CPU (target <= 2.2x)")
    print(f"baseline and polars kept the same rows with the same drops: {same}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
    return result


if __name__ == "__main__":
    main()
