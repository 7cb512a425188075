"""The apigen_mt kind (APIGen-MT-5k's schema): synthetic sessions written in it, read back by its
normalizer, every clean row kept by the filter's row rules and every broken row dropped under the
rule its defect breaks."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from stages.filter import FilterConfig, run
from stages.filter_rules import Drop
from stages.kinds.apigen_mt import SESSION_DEFECTS
from stages.parsing.parsers import cached_parsers
from stages.row_pipeline import prepare_row
from stages.synthetic.environments import heldout_environments
from stages.synthetic.generator import generate_samples


@pytest.fixture(scope="module")
def samples() -> list:
    return generate_samples("apigen_mt", 240, seed=5, malformed_fraction=0.25)


def test_rows_follow_the_hub_schema(samples: list) -> None:
    for s in samples:
        assert list(s.row) == ["conversations", "tools", "system"]
        assert all(set(t) == {"from", "value"} for t in s.row["conversations"])
        tools = json.loads(s.row["tools"])
        assert all(set(t) == {"name", "description", "parameters"} for t in tools)
        if s.defect is None:
            froms = [t["from"] for t in s.row["conversations"]]
            assert froms[0] == "human" and froms[-1] == "gpt"
            assert set(froms) <= {"human", "gpt", "function_call", "observation"}
            assert froms.count("function_call") == froms.count("observation")


def test_clean_rows_normalize_to_linked_calls_and_results(samples: list) -> None:
    parsers = cached_parsers()
    kept = 0
    for s in samples:
        if s.defect is not None:
            continue
        row = prepare_row("apigen_mt", json.dumps(s.row, ensure_ascii=False), parsers)
        messages = json.loads(row.messages)
        calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        results = [m for m in messages if m["role"] == "tool"]
        assert len(calls) == len(results) and {c["id"] for c in calls} == {m["tool_call_id"] for m in results}
        # Parallel steps stay one assistant turn: consecutive function_call entries are merged.
        steps = sum(1 for a, b in zip(s.row["conversations"], s.row["conversations"][1:], strict=False)
                    if b["from"] == "function_call" and a["from"] != "function_call")
        assert sum(1 for m in messages if m.get("tool_calls")) == steps
        kept += 1
    assert kept > 150


def test_each_defect_is_dropped_under_its_rule(tmp_path, samples: list) -> None:
    assert {s.defect for s in samples if s.defect} == set(SESSION_DEFECTS)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "s.jsonl").write_text("".join(json.dumps(s.row, ensure_ascii=False) + "\n" for s in samples))
    config = FilterConfig.model_validate({
        "raw_dir": str(raw), "out_dir": str(tmp_path / "out"), "metrics_file": str(tmp_path / "m.json"),
        "sources": {"s": "apigen_mt"}, "keep_dots": False, "max_chars": 10**6, "max_rows_per_function": 5,
        "function_cap_by_source": {"s": None}, "validation_fraction": 0.0, "seed": 0, "workers": 1,
        "mix": {"stage1": {}, "stage2": {"s": 1.0}}})
    metrics = run(config)
    expected = Counter(SESSION_DEFECTS[s.defect] for s in samples if s.defect)
    dropped = {rule: n for rule, n in metrics["sources"]["s"]["dropped"].items() if n}
    assert dropped == dict(expected)
    assert metrics["sources"]["s"]["rows_out"] == sum(1 for s in samples if s.defect is None)


def test_a_cap_of_its_own_replaces_the_global_one(tmp_path, samples: list) -> None:
    with pytest.raises(ValueError, match="not a declared source"):
        FilterConfig.model_validate({
            "raw_dir": "r", "out_dir": "o", "metrics_file": "m", "sources": {"s": "apigen_mt"}, "keep_dots": False,
            "max_chars": 10, "max_rows_per_function": 5, "function_cap_by_source": {"x": None},
            "validation_fraction": 0.0, "seed": 0, "workers": 1, "mix": {"stage1": {}, "stage2": {}}})


def test_real_rows_with_string_arguments_and_unknown_roles() -> None:
    parsers = cached_parsers()
    tools = json.dumps([{"name": "get_user", "description": "d", "parameters": {
        "type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}}])
    row = {"conversations": [
        {"from": "human", "value": "hi, I'm sara_1"},
        {"from": "function_call", "value": json.dumps({"name": "get_user", "arguments": '{"user_id": "sara_1"}'})},
        {"from": "observation", "value": "{\"name\": \"Sara\"}"},
        {"from": "gpt", "value": "Hello Sara."}], "tools": tools, "system": "# Policy\nBe kind."}
    messages = json.loads(prepare_row("apigen_mt", json.dumps(row), parsers).messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert json.loads(messages[2]["tool_calls"][0]["function"]["arguments"]) == {"user_id": "sara_1"}
    row["conversations"][3]["from"] = "narrator"
    with pytest.raises(Drop, match="role_order"):
        prepare_row("apigen_mt", json.dumps(row), parsers)


def test_training_sessions_never_use_a_held_out_environment(samples: list) -> None:
    held = {f.name for c in heldout_environments() for f in c.functions()}
    for s in samples:
        text = json.dumps(s.row)
        assert not [n for n in held if n in text]


@pytest.mark.parametrize("value", [json.dumps({"name": ["a"], "arguments": {}}), json.dumps({"arguments": {}}),
                                   "[" * 100_000, json.dumps({"name": "get_user", "arguments": "{not json"})])
def test_unreadable_calls_are_dropped_not_crashed_on(value: str) -> None:
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": value},
                             {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "ok"}],
           "tools": json.dumps([{"name": "get_user", "parameters": {"type": "object", "properties": {}}}]),
           "system": ""}
    with pytest.raises(Drop, match="bad_call"):
        prepare_row("apigen_mt", json.dumps(row), cached_parsers())
