"""``python -m bench forward`` on the tiny model: every number it reports is measured and sane."""

from __future__ import annotations

import json
from pathlib import Path

from bench import forward_bench


def test_forward_bench_reports_prefill_decode_and_machine(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "forward.json"
    result = forward_bench.main(["--model", str(tiny_model_dir), "--context", "48", "--rows", "1,3", "--steps", "4",
                                 "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["threads"] == 1 and result["non_embedding_params"] > 0
    assert result["prefill"]["tokens"] == 48 and result["prefill"]["seconds"] > 0
    assert result["prefill"]["tokens_per_s"] > 0 and result["prefill"]["matmul_gflops"] > 0
    # Each batch (1 row, 3 rows) ran its 4 steps together.
    assert [d["rows"] for d in result["decode"]] == [1, 3]
    assert all(d["steps_timed"] == 4 and d["step_ms"] > 0 for d in result["decode"])
    assert result["machine_speed"]["sgemm_gflops"] > 0 and result["machine_speed"]["copy_gb_s"] > 0
    assert len(result["loadavg_before"]) == 3 and result["machine"]["cpus"]
