"""Stage ``filter`` end to end on raw files written here: rules, counts, mixing, determinism."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_normalize import HERMES_CALL, HERMES_RESULT, OPENHERMES, WILDCHAT, hermes_row, toolace_row, zh_row

from bench.filter_rowwise import filter_rowwise
from stages.config import ConfigError, load_section
from stages.filter import FilterConfig, RowReaders, filter_source, run
from stages.filter_rules import RULES
from stages.parsing.parsers import cached_parsers

ROOT = Path(__file__).resolve().parents[1]


def _hermes_variant(i: int, guests: int | str = 4) -> dict:
    call = HERMES_CALL.replace("'guests': 4", f"'guests': {guests!r}").replace("Luigi's", f"Luigi's {i}")
    return hermes_row(call, HERMES_RESULT, f"Booked table {i}.")


def _chat(i: int) -> dict:
    row = json.loads(json.dumps(OPENHERMES))
    row["conversations"][1]["value"] = f"What is {i} * 28?"
    row["conversations"][2]["value"] = f"{i} * 28 = {i * 28}."
    return row


def _wild(i: int) -> dict:
    row = json.loads(json.dumps(WILDCHAT))
    row["conversation"][0]["content"] = f"Name prime number {i}."
    return row


def raw_lines() -> dict[str, list[str]]:
    """Per source: good rows plus one row breaking each rule (the expected counts are below)."""
    dumps = lambda r: json.dumps(r, ensure_ascii=False)  # noqa: E731
    hermes = [dumps(_hermes_variant(i)) for i in range(6)]
    hermes.append(hermes[0])                                             # duplicate
    hermes.append(dumps(_hermes_variant(90, guests="four")))             # invalid_arguments
    unknown = hermes_row(HERMES_CALL.replace("'book_table'", "'cancel_table'"),
                         HERMES_RESULT.replace('"book_table"', '"cancel_table"'))
    hermes.append(dumps(unknown))                                        # unknown_tool
    hermes.append(dumps(hermes_row(HERMES_CALL, HERMES_RESULT, "x" * 5000)))  # too_long
    hermes.append("{not json")                                           # unparseable
    hermes.append(dumps(hermes_row("<tool_call>\n{'name': 'book_table', 'arguments': {\n</tool_call>", None, None)))  # bad_call
    hermes.append(dumps(hermes_row(HERMES_CALL, HERMES_RESULT.replace('"book_table"', '"Venue.lookup"'))))  # tool_result_mismatch
    bad_schema = hermes_row(HERMES_CALL, HERMES_RESULT)
    bad_schema["conversations"][0]["value"] = bad_schema["conversations"][0]["value"].replace(
        "'venue': {'type': 'string'}", "'venue': {'type': 'string', 'minLength': -1}")
    hermes.append(dumps(bad_schema))                                     # bad_tool_schema
    hermes.append(dumps({"id": "n", "conversations": [
        {"from": "system", "value": "s\n<tools>\n[{'name': '获取', 'parameters': {'type': 'object'}}]\n</tools>"},
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}))  # invalid_name
    toolace = [dumps(toolace_row(f'[Get Stock Quote(symbol="T{i}")]')) for i in range(7)]
    toolace.append(dumps({"system": "Here are the tools you can use:\n- Foo: bar\n", "conversations": [
        {"from": "user", "value": "q"}, {"from": "assistant", "value": "(Foo=>['a'--'1'])"}]}))  # unsupported_tool_format
    zh = [dumps(zh_row({"name": "get_weather", "arguments": json.dumps({"city": c}, ensure_ascii=False)}))
          for c in ("北京", "上海", "广州")]
    openhermes = [dumps(_chat(i)) for i in range(10)]
    empty = _chat(99)
    empty["conversations"][1]["value"] = "   "
    openhermes.append(dumps(empty))                                      # empty_turn
    no_answer = _chat(98)
    no_answer["conversations"].pop()
    openhermes.append(dumps(no_answer))                                  # role_order
    wildchat = [dumps(_wild(i)) for i in range(6)] + [dumps(dict(_wild(50), toxic=True))]  # toxic
    return {"hermes": hermes, "toolace": toolace, "zh": zh, "chat": openhermes, "wild": wildchat}


EXPECTED_DROPS = {
    "hermes": {"duplicate": 1, "invalid_arguments": 1, "unknown_tool": 1, "too_long": 1, "unparseable": 1,
               "bad_call": 1, "tool_result_mismatch": 1, "bad_tool_schema": 1, "invalid_name": 1},
    "toolace": {"unsupported_tool_format": 1, "function_cap": 1},
    "zh": {}, "chat": {"empty_turn": 1, "role_order": 1}, "wild": {"toxic": 1},
}
KINDS = {"hermes": "hermes_fc", "toolace": "toolace", "zh": "fc_zh_hard", "chat": "openhermes", "wild": "wildchat"}


def make_config(tmp: Path, **overrides) -> FilterConfig:
    values = {
        "raw_dir": str(tmp / "raw"), "out_dir": str(tmp / "filtered"), "metrics_file": str(tmp / "metrics.json"),
        "sources": KINDS, "keep_dots": False, "max_chars": 4000, "max_rows_per_function": 6,
        "validation_fraction": 0.25, "seed": 3, "workers": 1,
        "mix": {"stage1": {"chat": 1.0, "wild": 0.5}, "stage2": {"hermes": 2.0, "toolace": 1.0, "zh": 3.0, "chat": 0.5}},
    }
    values.update(overrides)
    return FilterConfig.model_validate(values)


def write_raw(tmp: Path, lines: dict[str, list[str]], shuffle_seed: int | None = None) -> None:
    (tmp / "raw").mkdir(parents=True, exist_ok=True)
    for name, rows in lines.items():
        rows = list(rows)
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(rows)
        (tmp / "raw" / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_rule_is_counted_and_outputs_follow_the_contract(tmp_path):
    write_raw(tmp_path, raw_lines())
    metrics = run(make_config(tmp_path))
    for name, expected in EXPECTED_DROPS.items():
        got = {rule: n for rule, n in metrics["sources"][name]["dropped"].items() if n}
        assert got == expected, name
    assert set(metrics["dropped"]) == set(RULES)
    assert metrics["sources"]["hermes"]["rows_in"] == 15 and metrics["sources"]["hermes"]["rows_out"] == 6
    assert metrics["sources"]["toolace"]["rows_out"] == 6  # 7 rows call Get_Stock_Quote, capped at 6
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for stage in ("stage1", "stage2"):
        for split in ("train", "validation"):
            rows = read_jsonl(tmp_path / "filtered" / stage / f"{split}.jsonl")
            assert len(rows) == metrics["outputs"][f"{stage}/{split}"]["rows"]
            for row in rows:
                assert set(row) == {"messages", "tools", "source"}
                messages, tools = json.loads(row["messages"]), json.loads(row["tools"])
                assert messages[-1]["role"] == "assistant"
                assert all(t["type"] == "function" and set(t["function"]) == {"name", "description", "parameters"} for t in tools)
    stage1 = read_jsonl(tmp_path / "filtered" / "stage1" / "train.jsonl")
    assert {r["source"] for r in stage1} <= {"chat", "wild"} and all(r["tools"] == "[]" for r in stage1)


def test_mix_ratios_repeat_and_subsample_and_splits_do_not_overlap(tmp_path):
    write_raw(tmp_path, raw_lines())
    metrics = run(make_config(tmp_path, validation_fraction=0.0))
    s2 = metrics["outputs"]["stage2/train"]["per_source"]
    assert s2["hermes"] == 2 * 6 and s2["zh"] == 3 * 3 and s2["toolace"] == 6
    assert 0 < s2["chat"] < 10  # 0.5 of the 10 chat rows, seeded
    assert metrics["outputs"]["stage2/validation"]["rows"] == 0
    write_raw(tmp_path, raw_lines())
    metrics = run(make_config(tmp_path, validation_fraction=0.5))
    train = {json.dumps(r) for r in read_jsonl(tmp_path / "filtered" / "stage2" / "train.jsonl")}
    val = read_jsonl(tmp_path / "filtered" / "stage2" / "validation.jsonl")
    assert val and not train & {json.dumps(r) for r in val}
    # Validation is never repeated: each row once, even for sources mixed above 1.
    assert len({json.dumps(r) for r in val}) == len(val)


def test_same_params_give_identical_bytes_whatever_the_input_order(tmp_path):
    outputs = []
    for i, shuffle_seed in enumerate((None, 1, 2)):
        tmp = tmp_path / str(i)
        write_raw(tmp, raw_lines(), shuffle_seed)
        run(make_config(tmp))
        outputs.append([(tmp / "filtered" / s / f"{p}.jsonl").read_bytes()
                        for s in ("stage1", "stage2") for p in ("train", "validation")]
                       + [(tmp / "metrics.json").read_text().replace(str(tmp), "")])
    assert outputs[0] == outputs[1] == outputs[2]
    tmp = tmp_path / "seed"
    write_raw(tmp, raw_lines())
    run(make_config(tmp, seed=4))
    assert (tmp / "filtered" / "stage2" / "train.jsonl").read_bytes() != outputs[0][2]


def kept_and_drops(kind: str, lines, max_chars: int, cap: int | None, **kwargs) -> tuple[list[tuple[str, str]], Counter]:
    source = filter_source(kind, lines, cached_parsers(), max_chars, cap, **kwargs)
    try:
        return list(source.rows()), source.drops
    finally:
        source.close()


@pytest.mark.parametrize("chunk_rows", [1, 4, 4096])
def test_chunked_path_and_row_by_row_baseline_keep_the_same_rows(chunk_rows):
    for name, lines in raw_lines().items():
        kind = KINDS[name]
        kept, drops = kept_and_drops(kind, lines, 4000, 2, chunk_rows=chunk_rows)
        base_kept, base_drops = filter_rowwise(kind, lines, False, 4000, 2)
        assert kept == base_kept, name
        assert +drops == +base_drops, name


def test_two_reading_processes_give_the_same_result_as_one():
    lines = raw_lines()["hermes"] * 150
    one = kept_and_drops("hermes_fc", lines, 4000, 6)
    with RowReaders(2, keep_dots=False) as readers:
        two = kept_and_drops("hermes_fc", lines, 4000, 6, readers=readers, chunk_rows=100)  # 23 chunks, 2 processes
        # The same processes serve the next source (their caches kept): still the same rows.
        again = kept_and_drops("hermes_fc", lines, 4000, 6, readers=readers, chunk_rows=7)
    assert one == two == again
    assert one[1]["duplicate"] == 7 * 150 - 6  # 6 good rows (one listed twice) repeated 150 times


def test_reading_processes_need_their_with_block():
    readers = RowReaders(2, keep_dots=False)
    with pytest.raises(RuntimeError, match="with"):
        next(readers.read("hermes_fc", [[b"{}"]], cached_parsers()))
    with pytest.raises(ValueError):
        RowReaders(0, keep_dots=False)
    with RowReaders(2, keep_dots=True) as readers, pytest.raises(ValueError, match="keep_dots"):
        next(readers.read("hermes_fc", [[b"{}"]], cached_parsers(keep_dots=False)))


def test_a_source_is_read_in_chunks_not_whole(monkeypatch):
    """Rows are checked chunk by chunk while the lines are still being read (a lazy iterator in,
    at most one chunk of lines held), and the kept texts wait on disk, not in memory."""
    import stages.filter as filter_stage

    pulled = []
    seen_at_check = []
    real_check = filter_stage.check_rows

    def lines():
        for i, line in enumerate(raw_lines()["hermes"] * 20):
            pulled.append(i)
            yield line

    def check(*args, **kwargs):
        seen_at_check.append(len(pulled))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(filter_stage, "check_rows", check)
    source = filter_source("hermes_fc", lines(), cached_parsers(), 4000, None, chunk_rows=50)
    try:
        assert seen_at_check[:3] == [50, 100, 150] and len(seen_at_check) == 6
        assert source.rows_in == 300 and source.height == 6
        assert source.store.path.stat().st_size > 0  # the kept texts, spilled
    finally:
        source.close()
    assert not source.store.path.exists()


def test_output_does_not_depend_on_chunks_or_workers(tmp_path):
    outputs = []
    for i, (chunk_rows, workers) in enumerate(((4096, 1), (1, 1), (3, 2))):
        tmp = tmp_path / str(i)
        write_raw(tmp, raw_lines())
        run(make_config(tmp, workers=workers), chunk_rows=chunk_rows)
        outputs.append([(tmp / "filtered" / s / f"{p}.jsonl").read_bytes()
                        for s in ("stage1", "stage2") for p in ("train", "validation")]
                       + [(tmp / "metrics.json").read_text().replace(str(tmp), "")])
        # The spill beside the outputs is gone.
        assert sorted(p.name for p in tmp.iterdir()) == ["filtered", "metrics.json", "raw"]
    assert outputs[0] == outputs[1] == outputs[2]


def test_synthetic_rows_defects_dropped_and_good_rows_kept():
    synthetic = pytest.importorskip("stages.synthetic.generator")
    for kind in ("hermes_fc", "toolace", "fc_zh_hard", "openhermes", "wildchat"):
        samples = synthetic.generate_samples(kind, 300, seed=5, malformed_fraction=0.2)
        lines = [json.dumps(s.row, ensure_ascii=False) for s in samples]
        kept, drops = kept_and_drops(kind, lines, 10**6, None, chunk_rows=64)
        base_kept, base_drops = filter_rowwise(kind, lines, False, 10**6, None)
        assert kept == base_kept and +drops == +base_drops, kind
        good = [line for line, s in zip(lines, samples, strict=True) if s.defect is None]
        bad = len(samples) - len(good)
        # Every malformed row is dropped; good rows only go as duplicates of other good rows.
        assert sum(drops.values()) - drops["duplicate"] == bad, (kind, drops)
        assert len(kept) + drops["duplicate"] == len(good), kind


def test_real_row_shapes_are_kept_and_schema_fixes_counted(tmp_path):
    """Rows of the real-data shapes the normalizers once dropped or kept as text reach the output
    with their calls, and a repaired schema is counted under "fixed", not dropped."""
    from test_normalize import REAL_NAMES_TOOLS, toolace_system, toolace_turns

    system = toolace_system(REAL_NAMES_TOOLS)
    toolace = [json.dumps(toolace_turns(system, ("user", f"q{i}"), ("assistant", call)))
               for i, call in enumerate(['[Get User\'s Instagram Stories(username="@x")]',
                                         '[GET /categories/{categoryId}/v1(categoryId="5")]',
                                         'Sure:\n[Current Weather (Detailed)(lat="1")]',
                                         '[Get Account(riot-id="Phoenix", $top=2)]'])]
    enum_none = hermes_row(HERMES_CALL.replace("'terrace': True", "'terrace': True, 'area': 'garden'"), HERMES_RESULT)
    enum_none["conversations"][0]["value"] = enum_none["conversations"][0]["value"].replace(
        "'terrace': {'type': 'boolean'}", "'terrace': {'type': 'boolean'}, 'area': {'type': 'string', 'enum': [None]}")
    write_raw(tmp_path, {"toolace": toolace, "hermes": [json.dumps(enum_none), json.dumps(_hermes_variant(1))],
                         "zh": [], "chat": [], "wild": []})
    metrics = run(make_config(tmp_path, validation_fraction=0.0, max_chars=16000))
    assert metrics["sources"]["toolace"]["rows_out"] == 4 and not any(metrics["sources"]["toolace"]["dropped"].values())
    assert metrics["sources"]["hermes"]["rows_out"] == 2 and not any(metrics["sources"]["hermes"]["dropped"].values())
    assert metrics["sources"]["hermes"]["fixed"] == {"enum_null": 1} and metrics["fixed"] == {"enum_null": 1}
    rows = [json.loads(r["messages"]) for r in read_jsonl(tmp_path / "filtered" / "stage2" / "train.jsonl")
            if r["source"] == "toolace"]
    names = sorted(m["tool_calls"][0]["function"]["name"] for r in rows for m in r if m.get("tool_calls"))
    assert names == ["Current_Weather_Detailed", "GET_categories_categoryId_v1", "Get_Account",
                     "Get_User_s_Instagram_Stories"]


def test_config_is_strict_and_missing_input_is_a_clear_error(tmp_path):
    params = tmp_path / "params.yaml"
    good = make_config(tmp_path).model_dump(mode="json")
    params.write_text(yaml.safe_dump({"filter": dict(good, unknown_key=1)}))
    with pytest.raises(ConfigError, match="unknown_key"):
        load_section("filter", FilterConfig, params)
    bad_mix = dict(good, mix={"stage1": {"nope": 1.0}, "stage2": {}})
    params.write_text(yaml.safe_dump({"filter": bad_mix}))
    with pytest.raises(ConfigError, match="nope"):
        load_section("filter", FilterConfig, params)
    params.write_text(yaml.safe_dump({"filter": dict(good, sources={"x": "not_a_kind"})}))
    with pytest.raises(ConfigError):
        load_section("filter", FilterConfig, params)
    with pytest.raises(FileNotFoundError, match="raw stage"):
        run(make_config(tmp_path))


def test_cli_runs_the_stage_from_a_params_file(tmp_path):
    write_raw(tmp_path, raw_lines())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"filter": make_config(tmp_path).model_dump(mode="json"), "raw": {"ignored": True}}))
    proc = subprocess.run([sys.executable, "-m", "stages.filter", "--params", str(params)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert Counter({k: v for k, v in metrics["dropped"].items() if v}) == sum(
        (Counter(v) for v in EXPECTED_DROPS.values()), Counter())
    assert (tmp_path / "filtered" / "stage2" / "train.jsonl").stat().st_size > 0


def test_fast_validator_agrees_with_jsonschema():
    import jsonschema

    from stages.schema_validator import compile_simple

    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 5}, "x": {"type": "number", "exclusiveMinimum": 0},
        "s": {"type": "string", "enum": ["a", "b"]}, "t": {"type": ["string", "null"], "maxLength": 3},
        "xs": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "boolean"}},
                                          "required": ["k"], "additionalProperties": False}, "minItems": 1},
        "o": {"type": "object", "additionalProperties": {"type": "integer"}}},
        "required": ["n"]}
    check = compile_simple(schema)
    assert check is not None
    instances = [{"n": 1}, {"n": 0}, {"n": 2.0}, {"n": 2.5}, {"n": True}, {"n": "1"}, {}, [], "x", None,
                 {"n": 3, "x": 0}, {"n": 3, "x": 0.1}, {"n": 3, "x": False}, {"n": 3, "s": "a"}, {"n": 3, "s": "c"},
                 {"n": 3, "s": 1}, {"n": 3, "t": None}, {"n": 3, "t": "abcd"}, {"n": 3, "t": 5},
                 {"n": 3, "xs": []}, {"n": 3, "xs": [{"k": True}]}, {"n": 3, "xs": [{"k": 1}]},
                 {"n": 3, "xs": [{"k": True, "z": 1}]}, {"n": 3, "xs": [{}]}, {"n": 3, "o": {"a": 1, "b": 2}},
                 {"n": 3, "o": {"a": 1.5}}, {"n": 3, "o": []}, {"n": 6}, {"n": 3, "extra": [1]}]
    validator = jsonschema.Draft7Validator(schema)
    for instance in instances:
        assert check(instance) == validator.is_valid(instance), instance
    # Outside the subset: no fast check, jsonschema is used.
    assert compile_simple({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}) is None
    assert compile_simple({"type": "string", "pattern": "["}) is None
    assert compile_simple({"enum": [1, True]}) is None


def _random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A schema in the fast validator's keyword subset; values are sometimes of the wrong shape."""
    odd = [-1, 2.5, True, "x", None, [], ["a", "a"], {}]
    schema: dict = {}
    kind = rng.choice(["object", "array", "string", "integer", "number", "boolean", "null", None])
    if kind is not None:
        schema["type"] = rng.choice([kind, [kind, "null"], [kind, kind], [], "dict"]) if rng.random() < 0.2 else kind
    if rng.random() < 0.5:
        schema["description"] = rng.choice(["d", 3])
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "minItems", "maxItems"):
        if rng.random() < 0.15:
            schema[key] = rng.choice([0, 1, 2, 3.0, 1.5] + odd[:3])
    if rng.random() < 0.2:
        schema["enum"] = rng.choice([["a", "b"], ["1"], [1, "a"], "a"])
    if rng.random() < 0.1:
        schema["default"] = rng.choice(odd)
    if kind == "object" or rng.random() < 0.1:
        if depth < 2:
            schema["properties"] = {name: _random_schema(rng, depth + 1) for name in rng.sample("abcd", rng.randint(0, 3))}
        if rng.random() < 0.5:
            schema["required"] = rng.choice([["a"], ["a", "b"], [], ["a", "a"], [1], "a"])
        if rng.random() < 0.3:
            schema["additionalProperties"] = rng.choice([False, True, {"type": "integer"}, {"type": "nope"}, 1])
    if (kind == "array" or rng.random() < 0.05) and depth < 2:
        schema["items"] = rng.choice([_random_schema(rng, depth + 1), [], [{"type": "string"}], True])
    if rng.random() < 0.15:
        schema["pattern"] = rng.choice(["^a", "b$", "[", 3])
    if rng.random() < 0.03:
        schema["anyOf"] = [{"type": "string"}]  # outside the subset
    return schema


def _random_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(9 if depth < 2 else 7)
    if pick == 0:
        return rng.choice([0, 1, 2, 3, -1, 10**20])
    if pick == 1:
        return rng.choice([0.5, 2.0, -0.0, 1e300])
    if pick == 2:
        return rng.choice(["", "a", "b", "abcd", "1"])
    if pick == 3:
        return rng.choice([True, False])
    if pick in (4, 5):
        return None
    if pick == 6:
        return {}
    if pick == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {k: _random_value(rng, depth + 1) for k in rng.sample("abcde", rng.randint(0, 4))}


def test_fast_schema_checks_agree_with_jsonschema_on_random_schemas():
    import jsonschema
    from jsonschema.exceptions import SchemaError

    from stages.schema_validator import compile_simple, surely_meets_metaschema

    rng = random.Random(11)
    accepted = checked = 0
    for _ in range(1500):
        schema = _random_schema(rng)
        try:
            jsonschema.Draft7Validator.check_schema(schema)
            valid_schema = True
        except SchemaError:
            valid_schema = False
        # The shortcut may only ever say "valid" for schemas jsonschema accepts.
        if surely_meets_metaschema(schema):
            accepted += 1
            assert valid_schema, schema
        if not valid_schema:
            continue
        check = compile_simple(schema)
        if check is None:
            continue
        validator = jsonschema.Draft7Validator(schema)
        for _ in range(8):
            value = _random_value(rng)
            checked += 1
            assert check(value) == validator.is_valid(value), (schema, value)
    assert accepted > 300 and checked > 2000  # the generator really exercises both shortcuts


def test_arguments_are_read_as_json_reads_them():
    from stages.parsing.json_codec import arguments_value

    for text in ('{"a":1,"b":[1.5,"x",null,true]}', '{"n":123456789012345678901234567890}',
                 '{"n":-9223372036854775809}', '{"x":NaN}', '{"x":1e400}', '{"s":"\\ud800"}', '{"a":1,"a":2}'):
        got, want = arguments_value(text), json.loads(text)
        assert repr(got) == repr(want), text  # repr: NaN != NaN, and 1 vs 1.0 must not pass as equal
    with pytest.raises(ValueError):
        arguments_value('{"a":')


def test_rows_sharing_a_content_key_are_only_merged_when_identical(tmp_path):
    from stages.filter import deduplicate_and_cap
    from stages.filter_store import SpilledRows
    from stages.row_pipeline import EncodedRow

    store = SpilledRows(tmp_path / "rows.spill")
    texts = [("[2]", "[]"), ("[1]", "[]"), ("[1]", "[]"), ("[3]", "[]"), ("[1]", '[{"x":1}]')]
    store.add([EncodedRow(m.encode(), t.encode(), [("f", "{}")], (), key, ())
               for (m, t), key in zip(texts, [7, 7, 7, 9, 7], strict=True)])
    store.finish()
    try:
        kept, drops = deduplicate_and_cap(store, None)
        # Rows 1 and 2 are the same row; rows 0 and 4 only share their key (a hash collision) and
        # stay, ordered by key, then messages.
        assert [store.texts(i) for i in kept["row"]] == [("[1]", "[]"), ("[1]", '[{"x":1}]'), ("[2]", "[]"),
                                                         ("[3]", "[]")]
        assert drops == Counter({"duplicate": 1})
        # The cap ranks by the same order: rows over it for a function they call go.
        kept, drops = deduplicate_and_cap(store, 2)
        assert [store.texts(i) for i in kept["row"]] == [("[1]", "[]"), ("[1]", '[{"x":1}]')]
        assert drops == Counter({"duplicate": 1, "function_cap": 2})
    finally:
        store.close()


def test_a_row_with_text_that_has_no_utf8_form_is_dropped_not_fatal():
    lines = [json.dumps(_wild(1)), json.dumps(_wild(2)).replace("prime", "prime \\ud800")]
    kept, drops = kept_and_drops("wildchat", lines, 16000, None)
    assert len(kept) == 1 and drops == Counter({"unparseable": 1})
    assert "\\ud800" not in kept[0][0]


def test_lines_are_read_as_bytes_and_bytes_that_are_not_utf8_are_unparseable(tmp_path):
    from stages.filter import iter_lines, read_lines
    from stages.parsing.parsers import Parsers
    from stages.row_pipeline import prepare_encoded, prepare_row

    good = [json.dumps(_wild(i), ensure_ascii=False).replace("prime", "质数").encode() for i in range(3)]
    not_utf8 = good[0].replace("质数".encode(), b"\xff\xfe")
    surrogate = good[0].replace("质数".encode(), b"\xed\xa0\x80")  # a UTF-16 surrogate, UTF-8-encoded
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"\n".join([good[0], not_utf8, b"  \t", good[1], surrogate, b"", good[2]]))  # no final newline
    lines = list(iter_lines(path))
    assert [line.rstrip(b"\n") for line in lines] == [good[0], not_utf8, good[1], surrogate, good[2]]
    assert read_lines(path)[1] == read_lines(path)[3] == ""  # text for the baseline: not UTF-8 -> ""
    kept, drops = kept_and_drops("wildchat", lines, 16000, None)
    assert len(kept) == 3 and drops == Counter({"unparseable": 2})
    # Bytes and their text give the same row, with either reader.
    for raw in good:
        text = raw.decode()
        expected = prepare_row("wildchat", text, Parsers())
        assert prepare_row("wildchat", raw, Parsers()) == expected
        assert prepare_row("wildchat", raw, cached_parsers()) == expected
        encoded = prepare_encoded("wildchat", raw, cached_parsers())
        assert (encoded.messages.decode(), encoded.tools.decode(), encoded.key) == (expected.messages, expected.tools,
                                                                                    expected.key)


def test_call_ids_replace_only_their_placeholders():
    from stages.parsing.conversation import Conversation
    from stages.parsing.json_codec import FAST_JSON, STDLIB_JSON
    from stages.row_pipeline import finalize

    call = lambda i, name: {"id": f"#{i}", "type": "function",  # noqa: E731
                            "function": {"name": name, "arguments": '{"id":"#0","q":"\\":\\"#1"}'}}
    messages = [
        {"role": "user", "content": 'look up "id":"#0" and "tool_call_id":"#1", "#05", #12'},
        {"role": "assistant", "content": "#0", "tool_calls": [call(0, "f"), call(1, "g")]},
        {"role": "tool", "tool_call_id": "#1", "content": '":"#1"'},
        {"role": "tool", "tool_call_id": "#0", "content": "#0"},
        {"role": "assistant", "content": None, "tool_calls": [call(2, "f")]},
        {"role": "tool", "tool_call_id": "#2", "content": "{}"},
        {"role": "assistant", "content": "done"},
    ]
    conv = Conversation(messages, n_calls=3)
    fast, plain = finalize(conv, FAST_JSON), finalize(conv, STDLIB_JSON)
    assert fast == plain
    finalized = json.loads(fast[0])
    ids = [c["id"] for m in finalized if m.get("tool_calls") for c in m["tool_calls"]]
    assert [i[-3:] for i in ids] == ["000", "001", "002"] and len({i[:-3] for i in ids}) == 1
    assert [m["tool_call_id"] for m in finalized if m["role"] == "tool"] == [ids[1], ids[0], ids[2]]
    # Text that only looks like a placeholder stays as it was.
    assert finalized[0] == messages[0] and finalized[1]["content"] == "#0" and finalized[2]["content"] == '":"#1"'
    assert finalized[1]["tool_calls"][0]["function"] == messages[1]["tool_calls"][0]["function"]


def test_too_long_counts_characters_not_bytes():
    # Two rows of the same length in characters; in UTF-8 the Chinese one is about three times longer.
    rows = [hermes_row(HERMES_CALL, HERMES_RESULT, "好" * 1500), hermes_row(HERMES_CALL, HERMES_RESULT, "x" * 1500),
            hermes_row(HERMES_CALL, HERMES_RESULT, "好" * 2600)]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    from stages.parsing.parsers import Parsers
    from stages.row_pipeline import prepare_row

    prepared = [prepare_row("hermes_fc", line, Parsers()) for line in lines]
    chars = [len(r.messages) + len(r.tools) for r in prepared]
    max_chars = max(chars[:2]) + 10  # above the two short rows in characters, far below the first in bytes
    assert len(prepared[0].messages.encode()) > 2 * max_chars and chars[2] > max_chars
    kept, drops = kept_and_drops("hermes_fc", [line.encode() for line in lines], max_chars, None)
    assert len(kept) == 2 and drops == Counter({"too_long": 1})
    assert (kept, drops) == kept_and_drops("hermes_fc", lines, max_chars, None)
    base_kept, base_drops = filter_rowwise("hermes_fc", lines, False, max_chars, None)
    assert kept == base_kept and +drops == +base_drops


def test_a_sources_prompt_and_tool_list_caches_are_dropped_when_it_is_done():
    parsers = cached_parsers()
    lines = raw_lines()["toolace"]
    kept, _ = kept_and_drops("toolace", lines, 4000, None)
    source = filter_source("toolace", lines, parsers, 4000, None)
    try:
        assert list(source.rows()) == kept
    finally:
        source.close()
    assert all(cached.cache_info().currsize == 0 for cached in parsers._bound.values())
    assert parsers.tools_json.cache_info().currsize == 0
    assert parsers.tool_element.cache_info().currsize > 0  # tools repeat across sources: kept


def test_fast_and_plain_codecs_give_the_same_prepared_row_and_key():
    from stages.filter_rules import Drop
    from stages.parsing.json_codec import FAST_JSON, STDLIB_JSON
    from stages.parsing.parsers import Parsers
    from stages.row_pipeline import content_key, finalize, prepare_row, read_conversation

    seen = 0
    for name, lines in raw_lines().items():
        for line in lines:
            try:
                plain = prepare_row(KINDS[name], line, Parsers())
            except Drop:
                continue
            assert prepare_row(KINDS[name], line, cached_parsers()) == plain
            assert plain.key == content_key(plain.messages, plain.tools)
            # The same conversation finalized on orjson's bytes and on json's text.
            conv = read_conversation(KINDS[name], line, cached_parsers())
            assert finalize(conv, FAST_JSON) == finalize(conv, STDLIB_JSON) == plain[:2] + (plain.key,)
            seen += 1
    assert seen > 10


def test_filtering_leaves_the_garbage_collector_as_it_found_it():
    import gc

    lines = [json.dumps(_wild(i)) for i in range(3)]
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            kept, _ = kept_and_drops("wildchat", lines, 16000, None)
            assert len(kept) == 3 and gc.isenabled() == enabled
    finally:
        gc.enable()
