"""Filter: memory at M and 4M rows, wall, CPU and peak memory at N rows, and throughput against the
plain row-by-row baseline, in one run.

    python -m bench filter [--rows 50000] [--growth-rows M] [--baseline-rows 20000] [--repeats 3] [--workers 1]
                           [--json out.json]
    python -m bench filter --rows 1000000     # a million rows: M = 50,000, so 50k, 200k and 1M are measured

Rows are synthetic raw rows of the five single-request kinds (stages/synthetic/), mixed like the
default sources (hermes_fc, toolace, openhermes 2 : fc_zh_hard, wildchat 1); ``--rows`` counts them
all (N = 1,000,000 is 250,000 rows for each of the three larger kinds; 4,000,000 is a million rows a
source for those three). They are generated once per run (one process per kind, at most
``--gen-processes`` at a time) into a temporary directory; the smaller sizes are the first rows of
each file; everything is deleted at the end: nothing is carried over between runs.

Sizes: M = ``--growth-rows`` (default: N, at most 50,000), 4M, and N. By default (N = 50,000) these
are N and 4N. The memory growth is compared at M and 4M rather than at N and 4N: the stage keeps
about 100 bytes per row in memory (content keys, offsets, called functions, the mixed entries), so
past a few hundred thousand rows its peak grows with the rows by design and a 4x comparison there
measures those arrays, not whether the texts stream (306 MB at 1M rows, 573 MB at 4M); and a 4N
run at N = 1M generates, filters and writes 4M rows (9.7 GB of raw rows; 18 minutes for
``--rows 4000000`` against 7 for ``--rows 1000000`` on 2 cores). N itself is measured for wall,
CPU time, peak memory and throughput.

Measured, at each size:
- the whole stage (``python -m stages.filter`` with the default filter params, its sources limited
  to these five kinds) as a fresh process: its peak resident set size (the process's own
  ``VmHWM``), wall and CPU time (outputs written, then deleted). Target: at most 1.3x the peak
  memory for 4M rows against M (it streams);
- throughput: the stage's per-source path (stages.filter.filter_source: read in chunks, rules,
  dedup, cap), reading the files as the stage does, against the row-by-row baseline
  (bench/filter_rowwise.py) on the first ``--baseline-rows`` of the M rows, held in memory; and
  both on exactly that slice, from memory (``--repeats`` alternating rounds of the two, their
  medians used: the baseline's own speed moves most between runs). The mixing and writing of
  outputs are in no timing here (they are in the stage runs). Target: at least 20x the baseline's
  rows per CPU-second.

The baseline's list-based dedup is quadratic, so on all N rows it would run for hours; its rows/s
on the smaller slice is therefore an upper bound of its rows/s on N rows, and the headline ratio
(rows/s on N against baseline rows/s on the slice) understates the real gap. Every in-process run
starts with empty caches (parsers and compiled schema validators).

On a shared machine wall-clock ratios move with the load of other processes (the load average is
printed at the start and the end, with the CPU model); CPU-time ratios move less, but on a shared
2-core machine still by up to a third between runs (docs/data.md). Both sides of each ratio are
measured in the same run, one after the other.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import multiprocessing
import os
import shutil
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
from stages.filter import RowReaders, filter_source, iter_lines, read_lines
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
    """The first ``fraction`` of each file's lines, as files in ``directory`` (streamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, path in files.items():
        with path.open("rb") as fh:
            count = sum(1 for _ in fh)
        out[kind] = directory / path.name
        with path.open("rb") as src, out[kind].open("wb") as dst:
            dst.writelines(itertools.islice(src, round(count * fraction)))
    return out


Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def _clock() -> Timing:
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _median(timings: list[Timing]) -> Timing:
    """The round with the median CPU time (the lower middle one for an even count)."""
    return sorted(timings, key=lambda t: t[1])[(len(timings) - 1) // 2]


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
    section = read_params(ROOT / "params.yaml")["filter"]
    section.update(raw_dir=str(raw_dir), out_dir=str(work / "filtered"), metrics_file=str(work / "filter.json"),
                   sources={name: kind for name, kind in section["sources"].items() if name in SHARES},
                   function_cap_by_source={n: c for n, c in section["function_cap_by_source"].items() if n in SHARES},
                   mix={stage: {n: r for n, r in ratios.items() if n in SHARES}
                        for stage, ratios in section["mix"].items()})
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
    shutil.rmtree(work / "filtered")  # the outputs: gigabytes at a million rows
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
        start = _clock()  # the reading processes' start is in the time, as in the stage
        with RowReaders(workers, keep_dots=False) as readers:
            for kind, lines in data.items():
                sources[kind] = filter_source(kind, lines, parsers, MAX_CHARS, CAP, Path(spill), desc=kind,
                                              readers=readers)
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench filter", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="N: rows over the five kinds")
    parser.add_argument("--growth-rows", type=int, default=None,
                        help="M: peak memory compared at M and 4M rows (default: N, at most 50,000)")
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="rows the baseline runs on")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of baseline and streaming path on the slice, alternating; the medians are used")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="also time the streaming path with this many reading processes on N rows (1: skip)")
    parser.add_argument("--gen-processes", type=int, default=2, help="processes generating the input")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    bench_start = time.perf_counter()
    load_start = _load()
    print(f"load average (1/5/15 min) at start: {load_start}, {os.cpu_count()} CPUs ({_cpu_model()})", flush=True)
    n = args.rows
    m = args.growth_rows or min(n, 50_000)
    sizes = sorted({m, 4 * m, n})
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        largest = sizes[-1]
        print(f"generating {largest} synthetic raw rows ...", flush=True)
        files = {largest: make_input(largest, args.seed, tmp / f"raw_{largest}", args.gen_processes)}
        for size in sizes[:-1]:
            files[size] = head_files(files[largest], size / largest, tmp / f"raw_{size}")

        stage = {}
        for size in sizes:
            stage[size] = s = run_stage(tmp / f"raw_{size}", tmp / f"stage_{size}")
            print(f"stage on {s['rows_in']:>8} rows: peak RSS {s['peak_rss_mb']:7.1f} MB, {s['wall_s']:6.1f} s wall, "
                  f"{s['cpu_s']:6.1f} s CPU", flush=True)
        rows = {size: stage[size]["rows_in"] for size in sizes}

        fraction = min(1.0, args.baseline_rows / max(rows[m], 1))
        sub = {kind: read_lines(path, round(sum(1 for _ in iter_lines(path)) * fraction))
               for kind, path in files[m].items()}
        rows_sub = sum(map(len, sub.values()))
        gc.freeze()  # the slice stays alive throughout: keep the collector from rescanning it

        # Both on the slice, alternating, --repeats times: the median of each is what the ratios use.
        rounds_sub: list[Timing] = []
        rounds_base: list[Timing] = []
        same = True
        for _ in range(args.repeats):
            t, kept_sub, drops_sub = run_streaming(sub, rows=True)
            rounds_sub.append(t)
            print(_line("streaming, 1 process", rows_sub, t), flush=True)
            t, kept_base, drops_base = run_baseline(sub)
            rounds_base.append(t)
            print(_line("row-by-row baseline", rows_sub, t), flush=True)
            same = same and kept_sub == kept_base and +drops_sub == +drops_base
            del kept_sub, kept_base
        t_sub, t_base = _median(rounds_sub), _median(rounds_base)
        streaming = {}
        for size in sizes:
            streaming[size], _, drops = run_streaming({kind: iter_lines(path) for kind, path in files[size].items()})
            print(_line("streaming, 1 process", rows[size], streaming[size]), flush=True)
        t_nw = None
        if args.workers > 1:
            t_nw, _, _ = run_streaming({kind: iter_lines(path) for kind, path in files[n].items()}, args.workers)
            print(_line(f"streaming, {args.workers} processes", rows[n], t_nw), flush=True)

    def ratios(rows: int, timing: Timing) -> dict[str, float]:
        """Throughput ratio against the baseline, by wall clock and by CPU time."""
        return {clock: rows / timing[i] / (rows_sub / t_base[i]) for i, clock in enumerate(("wall", "cpu"))}

    result = {
        "cpu_model": _cpu_model(), "load_average_start": load_start, "baseline_rows": rows_sub,
        "growth_rows": [rows[m], rows[4 * m]],
        "peak_rss_growth_4m_over_m": stage[4 * m]["peak_rss_mb"] / stage[m]["peak_rss_mb"],
        "sizes": {str(size): {
            "rows": rows[size], "stage": stage[size], "streaming_seconds": streaming[size],
            "streaming_rows_per_s": {"wall": rows[size] / streaming[size][0], "cpu": rows[size] / streaming[size][1]},
            "ratio_vs_baseline": ratios(rows[size], streaming[size])} for size in sizes},
        "seconds": {"streaming_slice": t_sub, "baseline_slice": t_base},
        "slice_rounds": {"streaming": rounds_sub, "baseline": rounds_base,
                         "ratio_cpu": [b[1] / a[1] for a, b in zip(rounds_sub, rounds_base, strict=True)]},
        "baseline_rows_per_s": {"wall": rows_sub / t_base[0], "cpu": rows_sub / t_base[1]},
        "ratio_same_slice": ratios(rows_sub, t_sub),
        "same_kept_rows_and_drops": same,
        "drops_n": dict(sorted(drops.items())),
    }
    if t_nw is not None:
        result["workers"] = args.workers
        result["seconds"]["streaming_n_workers"] = t_nw
        result["ratio_streaming_n_workers_vs_baseline"] = ratios(rows[n], t_nw)
    result["load_average_end"] = _load()
    result["bench_seconds"] = time.perf_counter() - bench_start
    growth, slice_ratio = result["peak_rss_growth_4m_over_m"], result["ratio_same_slice"]
    print()
    print(f"peak RSS of the stage: {stage[m]['peak_rss_mb']:.0f} MB on {rows[m]} rows, "
          f"{stage[4 * m]['peak_rss_mb']:.0f} MB on {rows[4 * m]}: {growth:.2f}x for 4x the rows "
          f"(target <= {RSS_GROWTH_TARGET}x); stage CPU time {stage[4 * m]['cpu_s'] / stage[m]['cpu_s']:.2f}x")
    if n > 4 * m:
        per_row = (stage[n]["peak_rss_mb"] - stage[4 * m]["peak_rss_mb"]) * 2**20 / (rows[n] - rows[4 * m])
        print(f"stage on {rows[n]} rows: peak RSS {stage[n]['peak_rss_mb']:.0f} MB ({per_row:.0f} bytes a row more "
              f"than on {rows[4 * m]}), {stage[n]['wall_s']:.0f} s wall, {stage[n]['cpu_s']:.0f} s CPU")
    for size in sizes:
        r = result["sizes"][str(size)]["ratio_vs_baseline"]
        print(f"speed-up, streaming (1 process) on {rows[size]} rows vs baseline on {rows_sub}: "
              f"{r['cpu']:.1f}x CPU, {r['wall']:.1f}x wall (target >= {RATIO_TARGET:.0f}x)")
    print(f"speed-up on the same {rows_sub}-row slice: {slice_ratio['cpu']:.1f}x CPU, {slice_ratio['wall']:.1f}x wall")
    if args.repeats > 1:
        per_round = ", ".join(f"{r:.1f}x" for r in result["slice_rounds"]["ratio_cpu"])
        print(f"  ({args.repeats} alternating rounds, medians used; CPU ratio per round: {per_round})")
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
