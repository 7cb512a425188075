"""The data card stage: its numbers on rows whose answers are known, and the plot tables DVC reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from stages.data_card import DataCardConfig, run


def call(i: int, name: str) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": json.dumps(r["messages"]), "tools": json.dumps(r.get("tools", [])),
                                        "source": r["source"]}) + "\n" for r in rows), encoding="utf-8")


TOOL = {"type": "function", "function": {"name": "ping", "description": "ping", "parameters": {
    "type": "object", "properties": {}}}}


def test_card_counts_what_the_rows_hold(tmp_path: Path, tiny_model_dir: Path) -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    zh = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好!"}]
    parallel = [{"role": "user", "content": "ping twice"},
                {"role": "assistant", "content": None, "tool_calls": [call(0, "ping"), call(1, "ping")]},
                {"role": "tool", "tool_call_id": "call_0", "content": "ok"},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
                {"role": "assistant", "content": "done"}]
    single = [{"role": "user", "content": "ping"},
              {"role": "assistant", "content": None, "tool_calls": [call(0, "ping")]},
              {"role": "tool", "tool_call_id": "call_0", "content": "ok"},
              {"role": "user", "content": "again?"},
              {"role": "assistant", "content": "no"}]
    write(tmp_path / "data/stage1/train.jsonl", [{"messages": chat, "source": "a"}, {"messages": zh, "source": "b"}])
    write(tmp_path / "data/stage2/train.jsonl", [{"messages": parallel, "tools": [TOOL] * 3, "source": "fc"},
                                                 {"messages": single, "tools": [TOOL], "source": "fc"},
                                                 {"messages": chat, "source": "a"}])
    write(tmp_path / "data/stage2/validation.jsonl", [{"messages": chat, "source": "a"}])
    config = DataCardConfig(data_dir=str(tmp_path / "data"), tokenizer=str(tiny_model_dir),
                            metrics_file=str(tmp_path / "metrics/data.json"), plots_dir=str(tmp_path / "plots"),
                            token_bin=16, max_tokens_bin=256)
    card = run(config, "v2")
    assert json.loads((tmp_path / "metrics/data.json").read_text()) == json.loads(json.dumps(card))
    sets = card["sets"]
    assert set(sets) == {"stage1/train", "stage2/train", "stage2/validation"}
    s1 = sets["stage1/train"]
    assert s1["all"]["rows"] == 2 and s1["all"]["cjk_row_share"] == 0.5 and s1["b"]["cjk_row_share"] == 1.0
    assert s1["all"]["answers"] == {"text": 2, "calls": 0, "call_share": 0.0}
    fc = sets["stage2/train"]["fc"]
    assert fc["rows"] == 2 and fc["tools_offered"] == {"mean": 2.0, "max": 3, "rows_with_tools": 2}
    assert fc["answers"] == {"text": 2, "calls": 2, "call_share": 0.5}
    assert fc["calls_per_call_answer"] == 1.5 and fc["parallel_answer_share"] == 0.5
    assert fc["user_turns_mean"] == 1.5
    every = sets["stage2/train"]["all"]
    assert every["rows"] == 3 and every["tools_offered"]["rows_with_tools"] == 2
    # A longer conversation with tools is longer in tokens, and the quantiles are ordered.
    assert fc["tokens"]["p50"] > sets["stage2/train"]["a"]["tokens"]["max"]
    assert every["tokens"]["p50"] <= every["tokens"]["p90"] <= every["tokens"]["max"]

    with (tmp_path / "plots/tokens.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert set(table[0]) == {"tokens", "stage1_train", "stage2_train", "stage2_validation"}
    assert sum(int(r["stage2_train"]) for r in table) == 3 and len(table) == 256 // 16 + 1
    with (tmp_path / "plots/tools_offered.csv").open() as fh:
        tools = {int(r["tools"]): int(r["stage2_train"]) for r in csv.DictReader(fh)}
    assert tools == {0: 1, 1: 1, 2: 0, 3: 1}
    with (tmp_path / "plots/calls_per_call_answer.csv").open() as fh:
        calls = {int(r["max_calls"]): int(r["stage2_train"]) for r in csv.DictReader(fh)}
    assert calls == {0: 1, 1: 1, 2: 1}
    # Same inputs, same bytes.
    before = (tmp_path / "metrics/data.json").read_bytes(), (tmp_path / "plots/tokens.csv").read_bytes()
    run(config, "v2")
    assert before == ((tmp_path / "metrics/data.json").read_bytes(), (tmp_path / "plots/tokens.csv").read_bytes())
