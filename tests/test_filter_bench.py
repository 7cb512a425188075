"""`python -m bench filter` end to end on a few hundred rows: it runs every part (the stage at three
sizes, the slice rounds, reading processes) and reports what it measured consistently."""

from __future__ import annotations

from bench.filter_bench import _median, main


def test_median_round_is_the_middle_cpu_time() -> None:
    assert _median([(1.0, 3.0), (9.0, 1.0), (5.0, 2.0)]) == (5.0, 2.0)
    assert _median([(1.0, 4.0), (2.0, 1.0)]) == (2.0, 1.0)


def test_filter_bench_runs_small(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = main(["--rows", "400", "--baseline-rows", "120", "--repeats", "2", "--workers", "2",
                   "--gen-processes", "1", "--json", str(out)])
    assert out.is_file()
    assert result["same_kept_rows_and_drops"] is True
    rounds = result["slice_rounds"]
    assert len(rounds["streaming"]) == len(rounds["baseline"]) == len(rounds["ratio_cpu"]) == 2
    assert result["seconds"]["baseline_slice"] in rounds["baseline"]
    sizes = result["sizes"]
    assert sorted(int(k) for k in sizes) == [400, 1600]
    for size in sizes.values():
        assert size["stage"]["rows_in"] == size["rows"] > 0
        assert size["ratio_vs_baseline"]["cpu"] > 0
    assert result["ratio_streaming_n_workers_vs_baseline"]["wall"] > 0
