"""Stage ``raw``: the command line end to end, config errors, hub and local origins."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import raw
from stages.config import ConfigError, load_section

ROOT = Path(__file__).resolve().parents[1]
KIND_ROWS = {"hermes_fc": 40, "toolace": 40, "fc_zh_hard": 30, "openhermes": 40, "wildchat": 20, "apigen_mt": 12}


def _params(tmp_path: Path, sources: dict[str, Any], **extra: Any) -> Path:
    path = tmp_path / "params.yaml"
    section = {"output_dir": str(tmp_path / "out"), "sources": sources, **extra}
    path.write_text(yaml.safe_dump({"raw": section, "filter": {}}), encoding="utf-8")
    return path


def _synthetic_sources() -> dict[str, Any]:
    return {kind: {"kind": kind, "origin": {"type": "synthetic", "rows": n, "seed": 5, "malformed_fraction": 0.1}}
            for kind, n in KIND_ROWS.items()}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_writes_every_source_deterministically(tmp_path: Path) -> None:
    params = _params(tmp_path, _synthetic_sources())
    cmd = [sys.executable, "-m", "stages.raw", "--params", str(params)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    out = tmp_path / "out"
    snapshot = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert set(snapshot) == {f"{k}.jsonl" for k in KIND_ROWS}
    for kind, n in KIND_ROWS.items():
        rows = _read_jsonl(out / f"{kind}.jsonl")
        assert len(rows) == n
        assert f"{kind}: {n} rows" in first.stdout
    # ensure_ascii=False: Chinese is stored as text, not \u escapes.
    zh = snapshot["fc_zh_hard.jsonl"].decode("utf-8")
    assert "\\u" not in zh.split("\n")[0] and any("\u4e00" <= ch <= "\u9fff" for ch in zh)
    assert "malformed on purpose" in first.stderr
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == snapshot


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["toolace"]["origin"].update(colour="red"), "colour"),
        (lambda s: s["toolace"]["origin"].pop("seed"), "seed"),
        (lambda s: s["toolace"].update(kind="sharegpt"), "kind"),
        (lambda s: s["toolace"]["origin"].update(type="ftp"), "type"),
        (lambda s: s["toolace"]["origin"].update(malformed_fraction=2), "malformed_fraction"),
        (lambda s: s.update({"bad/name": s["toolace"]}), "plain file name"),
    ],
)
def test_config_errors_fail_loudly(tmp_path: Path, mutate: Any, message: str) -> None:
    sources = _synthetic_sources()
    mutate(sources)
    with pytest.raises(ConfigError, match=message):
        load_section("raw", raw.RawConfig, _params(tmp_path, sources))


def test_missing_section_keys_fail(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"raw": {"sources": _synthetic_sources()}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="output_dir"):
        load_section("raw", raw.RawConfig, path)
    path.write_text(yaml.safe_dump({"filter": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="missing section 'raw'"):
        load_section("raw", raw.RawConfig, path)


def test_hub_origin_calls_load_dataset_with_pinned_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    stamp = dt.datetime(2023, 4, 9, 0, 2, 53, tzinfo=dt.timezone.utc)

    pulled: list[int] = []

    def fake_load_dataset(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        calls.append((args, kwargs))
        for i in range(10**9):  # an endless stream: only the rows kept may be read
            pulled.append(i)
            yield {"conversation_hash": f"h{i}", "timestamp": stamp, "turn": 1}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    sources = {"wild": {"kind": "wildchat", "origin": {
        "type": "hub", "dataset": "allenai/WildChat-1M", "config": None, "split": "train",
        "revision": "0123abcd", "max_rows": 3}}}
    config = load_section("raw", raw.RawConfig, _params(tmp_path, sources))
    assert raw.run(config) == {"wild": 3}
    # Streamed: rows are read as they are written, nothing goes to a cache in the home directory.
    assert calls == [(("allenai/WildChat-1M", None), {"split": "train", "revision": "0123abcd", "streaming": True})]
    assert pulled == [0, 1, 2]
    rows = _read_jsonl(tmp_path / "out" / "wild.jsonl")
    assert rows[0] == {"conversation_hash": "h0", "timestamp": "2023-04-09T00:02:53+00:00", "turn": 1}


def test_local_origins_json_jsonl_parquet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"system": "s", "conversations": [{"from": "user", "value": "你好"}]},
            {"system": "t", "conversations": [{"from": "assistant", "value": "[f(a=1)]"}]}]
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps(rows[0]) + "\n{not json\n[1, 2]\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    sources = {name: {"kind": "toolace", "origin": {"type": "local", "path": str(tmp_path / file)}}
               for name, file in (("a", "a.json"), ("b", "b.jsonl"), ("c", "c.parquet"))}
    sources["d"] = {"kind": "toolace", "origin": {"type": "local", "path": str(tmp_path / "a.json"), "max_rows": 1}}
    config = load_section("raw", raw.RawConfig, _params(tmp_path, sources))
    with caplog.at_level("WARNING"):
        assert raw.run(config) == {"a": 2, "b": 2, "c": 2, "d": 1}
    assert "skipped 2 lines" in caplog.text
    for name in ("a", "b", "c"):
        assert _read_jsonl(tmp_path / "out" / f"{name}.jsonl") == rows
    assert "你好" in (tmp_path / "out" / "a.jsonl").read_text(encoding="utf-8")


def test_json_arrays_and_parquet_are_read_incrementally_with_the_same_values(tmp_path: Path) -> None:
    # Numbers, strings and objects cut at every possible place by the block boundary.
    items = [1, 22, -333, 4444.5e3, 1.5e-3, 12345678901234567890, "a]b,c", True, None, [],
             {"k": [1, {"z": "\u00e9\"x"}]}, {"conversations": [{"from": "user", "value": "你好"}]}]
    path = tmp_path / "a.json"
    path.write_text(" [ " + " ,\n".join(json.dumps(x, ensure_ascii=False) for x in items) + " ]\n", encoding="utf-8")
    for block in (1, 2, 3, 5, 8, 64, 1 << 20):
        assert list(raw.json_array_items(path, block)) == items, block
    for text in ("", "{}", "[1,", "[1 2]", "[1,]", "[1] x", '["a]', "[1x]"):
        path.write_text(text, encoding="utf-8")
        for block in (1, 100):
            with pytest.raises(ValueError):
                list(raw.json_array_items(path, block))
    rows = [{"id": i, "text": f"row {i}", "extra": None if i % 2 else {"n": i}} for i in range(2500)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet", row_group_size=700)
    assert list(raw.local_rows(raw.LocalOrigin(type="local", path=str(tmp_path / "r.parquet")))) == \
        pa.Table.from_pylist(rows).to_pylist()


def _openhermes_like_rows(n: int) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": f"question {i} " + "x" * 600, "weight": None},
                               {"from": "gpt", "value": f"answer {i} é 你好", "weight": 1.0}],
             "source": "s", "idx": i} for i in range(n)]


def test_a_large_json_array_is_read_item_by_item_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    rows = _openhermes_like_rows(4000)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    size = path.stat().st_size
    assert size > 3_000_000
    origin = raw.LocalOrigin(type="local", path=str(path))
    tracemalloc.start()
    try:
        count = sum(1 for _ in raw.local_rows(origin))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(rows)
    # Loaded whole, the rows alone would take several times the file's size.
    assert peak < size / 10, (peak, size)
    assert list(raw.local_rows(origin)) == rows


def test_hub_data_file_is_downloaded_at_the_revision_and_streamed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub

    hub_file = tmp_path / "hub_copy" / "openhermes2_5.json"  # stands in for the file on the hub
    hub_file.parent.mkdir()
    rows = _openhermes_like_rows(50)
    hub_file.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    downloads: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        downloads.append(kwargs)
        target = Path(kwargs["local_dir"]) / kwargs["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(hub_file.read_bytes())
        return str(target)

    def no_datasets(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a data file is read by the stage, not through datasets")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(datasets, "load_dataset", no_datasets)
    origin = {"type": "hub", "dataset": "teknium/OpenHermes-2.5", "config": None, "split": "train",
              "revision": "0123abcd", "data_file": "openhermes2_5.json"}
    sources = {"oh": {"kind": "openhermes", "origin": origin},
               "oh_head": {"kind": "openhermes", "origin": dict(origin, max_rows=7)}}
    config = load_section("raw", raw.RawConfig, _params(tmp_path, sources))
    assert raw.run(config) == {"oh": 50, "oh_head": 7}
    out = tmp_path / "out"
    local_dir = out / "hub" / "teknium__OpenHermes-2.5" / "0123abcd"
    assert downloads[0] == {"repo_id": "teknium/OpenHermes-2.5", "filename": "openhermes2_5.json",
                            "repo_type": "dataset", "revision": "0123abcd", "local_dir": local_dir}
    # Downloaded into the stage's DVC-tracked output directory, beside the rows written from it.
    assert (local_dir / "openhermes2_5.json").is_file()
    assert _read_jsonl(out / "oh.jsonl") == rows
    assert _read_jsonl(out / "oh_head.jsonl") == rows[:7]


def test_local_origin_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    (tmp_path / "obj.json").write_text('{"a": 1}', encoding="utf-8")
    for path, error, message in ((tmp_path / "missing.jsonl", FileNotFoundError, "not found"),
                                 (tmp_path / "x.csv", ValueError, "unsupported file type"),
                                 (tmp_path / "obj.json", ValueError, "JSON array")):
        origin = raw.LocalOrigin(type="local", path=str(path))
        with pytest.raises(error, match=message):
            list(raw.local_rows(origin))


def test_failing_source_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def broken_stream(*args: Any, **kwargs: Any) -> Any:
        yield {"id": 1}
        raise ConnectionError("hub went away")

    monkeypatch.setattr(datasets, "load_dataset", broken_stream)
    out = tmp_path / "out" / "h.jsonl"
    out.parent.mkdir()
    out.write_text('{"id": 0}\n', encoding="utf-8")  # the previous run's output
    sources = {"h": {"kind": "hermes_fc", "origin": {"type": "hub", "dataset": "d/x", "config": "c",
                                                      "split": "train", "revision": "r1"}}}
    config = load_section("raw", raw.RawConfig, _params(tmp_path, sources))
    with pytest.raises(ConnectionError):
        raw.run(config)
    assert out.read_text(encoding="utf-8") == '{"id": 0}\n'
    assert [p.name for p in out.parent.iterdir()] == ["h.jsonl"]


def test_metrics_count_rows_defects_and_dropped_sessions(tmp_path: Path) -> None:
    sources = {"s": {"kind": "apigen_mt", "origin": {"type": "synthetic", "rows": 30, "seed": 4,
                                                     "malformed_fraction": 0.2}}}
    config = load_section("raw", raw.RawConfig, _params(tmp_path, sources, metrics_file=str(tmp_path / "m.json")))
    raw.run(config)
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["sources"]["s"]
    assert metrics["rows"] == 30 and sum(metrics["malformed"].values()) == 6
    assert set(metrics["sessions_dropped"]) <= {"call_failed", "replay_failed", "replay_mismatch", "too_few_turns",
                                                "empty_step"}


def test_default_params_section_is_valid_and_offline() -> None:
    config = load_section("raw", raw.RawConfig, ROOT / "params.yaml")
    assert config.output_dir == "data/raw"
    assert {s.kind for s in config.sources.values()} == set(KIND_ROWS)
    assert all(isinstance(s.origin, raw.SyntheticOrigin) for s in config.sources.values())


def test_config_kinds_match_the_generator() -> None:
    from typing import get_args

    from stages import filter as filter_stage
    from stages.kinds import KINDS
    from stages.synthetic.generator import generate_rows

    # One list of kinds: the raw and filter configs accept exactly the registry's, and the
    # generator writes each of them.
    assert get_args(raw.Kind) == get_args(filter_stage.Kind) == KINDS
    for kind in get_args(raw.Kind):
        rows = generate_rows(kind, 3, seed=1)
        assert len(rows) == 3 and all(isinstance(r, dict) and r for r in rows), kind
