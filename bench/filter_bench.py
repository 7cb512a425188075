"""Filter: memory at N and 4N rows, and throughput against the plain row-by-row baseline, in one run.

    python -m bench filter [--rows 50000] [--baseline-rows 20000] [--workers 1] [--json out.json]

Rows are synthetic raw rows of every kind (stages/synthetic/), mixed like the default sources. They
are generated once per run (one process per kind, at most ``--gen-processes`` at a time) into a
temporary directory and deleted at the end: nothing is carried over between runs.

Measured:
- peak memory: the whole stage (``python -m stages.filter`` with the default filter params) as a
  fresh process on N and on 4N rows: its peak resident set size (the process's own ``VmHWM``),
  wall and CPU time. The stage streams, so 4x the rows should cost at most 1.3x the memory;
- throughput: the stage's per-source path (stages.filter.filter_source: read in chunks, rules,
  dedup, cap) on the N and the 4N rows, reading the files as the stage does, against the
  row-by-row baseline (bench/filter_rowwise.py) on the first ``--baseline-rows`` of the N rows,
  held in memory; and both on exactly that slice, from memory. The mixing and writing of outputs
  are in no timing here (they are in the stage runs).

The baseline's list-based dedup is quadratic, so on all N rows it would run for hours; its rows/s
on the smaller slice is therefore an upper bound of its rows/s on N rows, and the headline ratio
(rows/s on N against baseline rows/s on the slice) understates the real gap. Every in-process run
starts with empty caches (parsers and compiled schema validators).

On a shared machine wall-clock ratios move with the load of other processes (the load average is
printed at the start and the end); CPU-time ratios move much less. Both sides of each ratio are
measured in the same run, one after the other.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import yaml

from bench.filter_rowwise import filter_rowwise
from stages.config import read_params
from stages.filter import filter_source, iter_lines, read_lines
from stages.parsing.parsers import cached_parsers
from stages.schema_validator import compiled_validator

ROOT = Path(__file__).resolve().parents[1]
# Share of each kind in the benchmark input (the default params' sources: 2:2:1:2:1).
SHARES = {"hermes_fc": 0.25, "toolace": 0.25, "fc_zh_hard": 0.125, "openhermes": 0.25, "wildchat": 0.125}
MAX_CHARS = 16000
CAP = 200
RSS_GROWTH_TARGET = 1.3
RATIO_TARGET = 20.0


def _generate_file(task: tuple[str, int, int, str]) -> tuple[str, float]:
    from stages.synthetic.generator import iter_samples

    kind, n, seed, path = task
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for sample in iter_samples(kind, n, seed):
            fh.write(json.dumps(sample.row, ensure_ascii=False))  # as the raw stage writes them
            fh.write("\n")
    return kind, time.perf_counter() - t0


def make_input(rows: int, seed: int, directory: Path, processes: int = 2) -> dict[str, Path]:
    """``rows`` raw rows split over the kinds by SHARES, one ``<kind>.jsonl`` each in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tasks = [(kind, round(rows * share), seed, str(directory / f"{kind}.jsonl")) for kind, share in SHARES.items()]
    tasks.sort(key=lambda t: -t[1])  # largest first, so the processes finish at about the same time
    if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            done = dict(pool.imap_unordered(_generate_file, tasks))
    else:
        done = dict(map(_generate_file, tasks))
    for kind, n, _, _ in sorted(tasks, key=lambda t: list(SHARES).index(t[0])):
        print(f"  generated {n:>7} {kind} rows in {done[kind]:5.1f} s", flush=True)
    return {kind: directory / f"{kind}.jsonl" for kind in SHARES}


def head_files(files: dict[str, Path], fraction: float, directory: Path) -> dict[str, Path]:
    """The first ``fraction`` of each file's lines, as files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, path in files.items():
        lines = path.read_bytes().splitlines(keepends=True)
        out[kind] = directory / path.name
        out[kind].write_bytes(b"".join(lines[: round(len(lines) * fraction)]))
    return out


Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def _clock() -> Timing:
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _since(start: Timing) -> Timing:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


# Runs the stage in this interpreter, then prints the process's peak resident memory. VmHWM is the
# high-water mark of this process's own memory map: ru_maxrss would also count the memory of the
# benchmark process it was forked from (Linux carries it over exec).
_STAGE_WITH_PEAK = """
import runpy, sys
sys.argv = ["stages.filter", "--params", sys.argv[1]]
runpy.run_module("stages.filter", run_name="__main__", alter_sys=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("VmHWM", status["VmHWM"].split()[0])
"""


def run_stage(raw_dir: Path, work: Path) -> dict[str, float]:
    """``python -m stages.filter`` on ``raw_dir`` (default filter params) as a fresh process: its
    peak RSS, wall and CPU time."""
    params = read_params(ROOT / "params.yaml")
    section = dict(params["filter"], raw_dir=str(raw_dir), out_dir=str(work / "filtered"),
                   metrics_file=str(work / "filter.json"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump({"filter": section}, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OCTUPUS_LOG_LEVEL="WARNING")
    start = time.perf_counter()
    with (work / "stdout.txt").open("wb") as out, (work / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _STAGE_WITH_PEAK, str(work / "params.yaml")],
                                cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        stderr = (work / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"the filter stage failed ({proc.returncode}):\n{stderr[-3000:]}")
    stdout = (work / "stdout.txt").read_text(encoding="utf-8", errors="replace")
    peak_kb = next(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("VmHWM "))
    metrics = json.loads((work / "filter.json").read_text(encoding="utf-8"))
    return {"peak_rss_mb": peak_kb / 1024, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rows_in": sum(s["rows_in"] for s in metrics["sources"].values()),
            "rows_out": sum(s["rows_out"] for s in metrics["sources"].values())}


def run_streaming(data: dict[str, Iterable[str]], workers: int = 1,
                  rows: bool = False) -> tuple[Timing, dict[str, list[tuple[str, str]]], Counter[str]]:
    """Timed: the stage's per-source path, everything up to the kept rows. Reading the kept rows
    back (only needed to compare with the baseline) happens after the clock stops."""
    gc.collect()
    compiled_validator.cache_clear()  # module-level: would otherwise carry over from the previous run
    parsers = cached_parsers()  # fresh caches: nothing carried over between runs
    sources = {}
    drops: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="filter-bench-spill-") as spill:
        start = _clock()
        for kind, lines in data.items():
            sources[kind] = filter_source(kind, lines, parsers, MAX_CHARS, CAP, Path(spill), desc=kind,
                                          workers=workers)
            drops.update(sources[kind].drops)
        timing = _since(start)
        kept = {kind: list(source.rows()) for kind, source in sources.items()} if rows else {}
        for source in sources.values():
            source.close()
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
    return (f"{label:<24} {rows:>8} rows: {wall:7.1f} s wall {rows / wall:9.0f} rows/s | "
            f"{cpu:7.1f} s CPU {rows / cpu:9.0f} rows/CPU-s")


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench filter", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="N (memory is also measured at 4N)")
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="rows the baseline runs on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="also time the streaming path with this many reading processes on N rows (1: skip)")
    parser.add_argument("--gen-processes", type=int, default=2, help="processes generating the input")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bench_start = time.perf_counter()
    load_start = _load()
    print(f"load average (1/5/15 min) at start: {load_start}, {os.cpu_count()} CPUs", flush=True)
    n = args.rows
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"generating {4 * n} synthetic raw rows ...", flush=True)
        big = make_input(4 * n, args.seed, tmp / "raw_4n", args.gen_processes)
        small = head_files(big, 0.25, tmp / "raw_n")

        stage_n = run_stage(tmp / "raw_n", tmp / "stage_n")
        print(f"stage on N:  {stage_n['rows_in']:>8} rows, peak RSS {stage_n['peak_rss_mb']:7.1f} MB, "
              f"{stage_n['wall_s']:6.1f} s wall, {stage_n['cpu_s']:6.1f} s CPU", flush=True)
        stage_4n = run_stage(tmp / "raw_4n", tmp / "stage_4n")
        print(f"stage on 4N: {stage_4n['rows_in']:>8} rows, peak RSS {stage_4n['peak_rss_mb']:7.1f} MB, "
              f"{stage_4n['wall_s']:6.1f} s wall, {stage_4n['cpu_s']:6.1f} s CPU", flush=True)

        rows_n, rows_4n = stage_n["rows_in"], stage_4n["rows_in"]
        fraction = min(1.0, args.baseline_rows / max(rows_n, 1))
        sub = {kind: lines[: round(len(lines) * fraction)] for kind, lines in
               ((kind, read_lines(path)) for kind, path in small.items())}
        rows_sub = sum(map(len, sub.values()))
        gc.freeze()  # the slice stays alive throughout: keep the collector from rescanning it

        t_sub, kept_sub, drops_sub = run_streaming(sub, rows=True)
        print(_line("streaming, 1 process", rows_sub, t_sub), flush=True)
        t_base, kept_base, drops_base = run_baseline(sub)
        print(_line("row-by-row baseline", rows_sub, t_base), flush=True)
        same = kept_sub == kept_base and +drops_sub == +drops_base
        del kept_sub, kept_base
        t_n, _, drops_n = run_streaming({kind: iter_lines(path) for kind, path in small.items()})
        print(_line("streaming, 1 process", rows_n, t_n), flush=True)
        t_4n, _, _ = run_streaming({kind: iter_lines(path) for kind, path in big.items()})
        print(_line("streaming, 1 process", rows_4n, t_4n), flush=True)
        t_nw = None
        if args.workers > 1:
            t_nw, _, _ = run_streaming({kind: iter_lines(path) for kind, path in small.items()}, args.workers)
            print(_line(f"streaming, {args.workers} processes", rows_n, t_nw), flush=True)

    def rate(rows: int, timing: Timing, which: int) -> float:
        return rows / timing[which]

    def ratios(rows: int, timing: Timing) -> dict[str, float]:
        """Throughput ratio against the baseline, by wall clock and by CPU time."""
        return {clock: rate(rows, timing, i) / rate(rows_sub, t_base, i) for i, clock in enumerate(("wall", "cpu"))}

    result = {
        "rows_n": rows_n, "rows_4n": rows_4n, "baseline_rows": rows_sub,
        "stage_n": stage_n, "stage_4n": stage_4n,
        "peak_rss_growth_4n_over_n": stage_4n["peak_rss_mb"] / stage_n["peak_rss_mb"],
        "stage_cpu_growth_4n_over_n": stage_4n["cpu_s"] / stage_n["cpu_s"],
        "seconds": {"streaming_slice": t_sub, "baseline_slice": t_base, "streaming_n": t_n, "streaming_4n": t_4n},
        "rows_per_s": {
            clock: {"streaming_n": rate(rows_n, t_n, i), "streaming_4n": rate(rows_4n, t_4n, i),
                    "streaming_slice": rate(rows_sub, t_sub, i), "baseline_slice": rate(rows_sub, t_base, i)}
            for i, clock in enumerate(("wall", "cpu"))},
        "ratio_streaming_n_vs_baseline": ratios(rows_n, t_n),
        "ratio_streaming_4n_vs_baseline": ratios(rows_4n, t_4n),
        "ratio_same_slice": ratios(rows_sub, t_sub),
        "same_kept_rows_and_drops": same,
        "drops_n": dict(sorted(drops_n.items())),
        "load_average_start": load_start,
    }
    if t_nw is not None:
        result["workers"] = args.workers
        result["seconds"]["streaming_n_workers"] = t_nw
        result["ratio_streaming_n_workers_vs_baseline"] = ratios(rows_n, t_nw)
    result["load_average_end"] = _load()
    result["bench_seconds"] = time.perf_counter() - bench_start
    head_ratio, slice_ratio = result["ratio_streaming_4n_vs_baseline"], result["ratio_same_slice"]
    growth = result["peak_rss_growth_4n_over_n"]
    print()
    print(f"peak RSS of the stage: {stage_n['peak_rss_mb']:.0f} MB on {rows_n} rows, {stage_4n['peak_rss_mb']:.0f} MB "
          f"on {stage_4n['rows_in']}: {growth:.2f}x for 4x the rows (target <= {RSS_GROWTH_TARGET}x)")
    print(f"stage CPU time N -> 4N: {result['stage_cpu_growth_4n_over_n']:.2f}x")
    n_ratio = result["ratio_streaming_n_vs_baseline"]
    print(f"speed-up, streaming (1 process) on {rows_4n} rows vs baseline on {rows_sub}: "
          f"{head_ratio['cpu']:.1f}x CPU, {head_ratio['wall']:.1f}x wall (target >= {RATIO_TARGET:.0f}x); "
          f"on {rows_n} rows: {n_ratio['cpu']:.1f}x CPU, {n_ratio['wall']:.1f}x wall")
    print(f"speed-up on the same {rows_sub}-row slice: {slice_ratio['cpu']:.1f}x CPU, {slice_ratio['wall']:.1f}x wall")
    if t_nw is not None:
        w = result["ratio_streaming_n_workers_vs_baseline"]
        print(f"speed-up with {args.workers} reading processes: {w['cpu']:.1f}x CPU, {w['wall']:.1f}x wall")
    print(f"baseline and streaming path kept the same rows with the same drops: {same}")
    print(f"load average at start {load_start}, at end {result['load_average_end']}; "
          f"whole benchmark {result['bench_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
    return result


if __name__ == "__main__":
    main()
