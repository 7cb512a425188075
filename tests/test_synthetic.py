"""The synthetic generator: bank, determinism, each kind's raw schema and its quirks, valid calls."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from stages.kinds import KINDS
from stages.synthetic.chat import qa
from stages.synthetic.function_bank import BANK, DOMAINS
from stages.synthetic.generator import CASE_TYPES, CHAT_DEFECTS, DEFECTS, KIND_DEFECTS, generate_rows, generate_samples

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u4e00-\u9fff]")
TOOL_CALL = re.compile(r"<tool_call>(?:\n|\\n)(.*?)(?:\n|\\n)</tool_call>", re.S)
TOOL_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.S)


@pytest.fixture(scope="module")
def samples() -> dict[str, list]:
    return {kind: generate_samples(kind, 600, seed=7, malformed_fraction=0.1) for kind in KINDS}


# ----------------------------------------------------------------------------- helpers


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def _py_to_json_types(schema: Any) -> Any:
    """ToolACE writes python type names; map them back for jsonschema."""
    names = {"dict": "object", "int": "integer", "float": "number"}
    if isinstance(schema, dict):
        out = {k: _py_to_json_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = names.get(out["type"], out["type"])
        return out
    if isinstance(schema, list):
        return [_py_to_json_types(v) for v in schema]
    return schema


def _node_value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[node.id]
    if isinstance(node, ast.List):
        return [_node_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_node_value(k): _node_value(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_node_value(node.operand)
    raise ValueError(f"unexpected node {ast.dump(node)}")


TOOLACE_NAME = re.compile(r"(?:(?<=^\[)|(?<=, ))([A-Za-z_/][\w .\-/]*?)\(")


def _toolace_calls(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``[Name With Spaces(a="x", n=2.0), f()]`` with ast, never eval."""
    placeholder: dict[str, str] = {}

    def swap(m: re.Match[str]) -> str:
        placeholder[f"__f{len(placeholder)}"] = m[1]
        return f"__f{len(placeholder) - 1}("

    tree = ast.parse(TOOLACE_NAME.sub(swap, text), mode="eval").body
    assert isinstance(tree, ast.List)
    return [(placeholder[c.func.id], {k.arg: _node_value(k.value) for k in c.keywords}) for c in tree.elts]


def _calls_and_schemas(kind: str, row: dict[str, Any]) -> tuple[list[tuple[str, dict]], dict[str, dict]]:
    """Every (name, arguments) call in a row, and the offered tools' schemas by name."""
    calls: list[tuple[str, dict]] = []
    if kind == "hermes_fc":
        system = row["conversations"][0]["value"]
        tools = _literal(system.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0])
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        for turn in row["conversations"]:
            if turn["from"] == "gpt":
                for body in TOOL_CALL.findall(turn["value"]):
                    call = _literal(body)
                    calls.append((call["name"], call["arguments"]))
    elif kind == "toolace":
        system = row["system"]
        start = system.index("invoke:\n") + len("invoke:\n")
        end = system.index(". \nShould you decide")
        tools = json.loads(system[start:end])
        schemas = {t["name"]: _py_to_json_types(t["parameters"]) for t in tools}
        for turn in row["conversations"]:
            if turn["from"] == "assistant" and turn["value"].startswith("["):
                calls += _toolace_calls(turn["value"])
    else:
        schemas = {f["name"]: f["parameters"] for f in json.loads(row["functions"])}
        for msg in row["conversation"]:
            fc = msg["function_call"]
            if fc is not None:
                fc = json.loads(fc) if isinstance(fc, str) else fc
                calls.append((fc["name"], json.loads(fc["arguments"])))
    return calls, schemas


# ----------------------------------------------------------------------------- bank


def test_bank_is_large_varied_and_schemas_are_valid() -> None:
    assert len(BANK) >= 300
    assert len({f.name for f in BANK}) == len(BANK)
    assert len(DOMAINS) >= 20 and len({f.domain.key for f in BANK}) >= 20
    names = [f.name for f in BANK]
    assert sum(bool(re.fullmatch(r"[a-z]+(_[a-z]+)+", n)) for n in names) >= 50
    assert sum(bool(re.fullmatch(r"[a-z]+([A-Z][a-z]+)+", n)) for n in names) >= 50
    assert sum(bool(re.fullmatch(r"[A-Z][A-Za-z]*\.[a-z]+([A-Z][a-z]+)+", n)) for n in names) >= 20
    # Names that are prefixes of each other must coexist (the grammar has to keep them apart).
    assert {"get_weather", "get_weather_forecast", "get_stock_price", "get_stock_price_history"} <= set(names)
    types: Counter[str] = Counter()
    for fn in BANK:
        schema = fn.parameters()
        jsonschema.Draft202012Validator.check_schema(schema)
        for prop in schema["properties"].values():
            types["enum" if "enum" in prop else prop["type"]] += 1
        assert set(schema["required"]) <= set(schema["properties"])
    assert {"string", "integer", "number", "boolean", "enum", "array", "object"} <= set(types)
    assert any(f.required and len(f.required) < len(f.params) for f in BANK)  # required and optional
    assert any(not f.required for f in BANK)  # some take no required argument


def test_calculation_functions_require_every_input_and_return_the_computed_answer() -> None:
    import math
    import random

    from stages.synthetic.function_bank import CALCULATION_DOMAINS, FORMULAS

    calc = [f for f in BANK if f.domain.key in CALCULATION_DOMAINS]
    assert len({f.domain.key for f in calc}) == len(CALCULATION_DOMAINS) and len(calc) >= 20
    rng = random.Random(0)
    for fn in calc:
        assert fn.entity.key in FORMULAS
        for _ in range(5):
            args = fn.arguments(rng, zh=False)
            result = fn.result(rng, args, zh=False)
            assert set(result) == {n for n, v in args.items() if not isinstance(v, list)} | {fn.entity.results[0][0]}
            value = result[fn.entity.results[0][0]]
            assert isinstance(value, (int, float)) and math.isfinite(value)
            assert args.get("from_unit") is None or args["from_unit"] != args["to_unit"]
    by = {f.entity.key: f for f in calc}
    assert by["triangle_area"].result(rng, {"base": 10, "height": 5}, False)["area"] == 25
    assert by["factorial"].result(rng, {"number": 5}, False)["factorial"] == 120
    assert by["length"].result(rng, {"value": 2, "from_unit": "km", "to_unit": "m"}, False)["converted"] == 2000
    assert by["median"].result(rng, {"numbers": [3, 1, 4, 2]}, False)["median"] == 2.5


def test_cases_draw_each_domain_about_equally_whatever_its_number_of_functions() -> None:
    import random

    from stages.synthetic.function_bank import TRAIN

    rng = random.Random(1)
    draws = Counter(TRAIN.draw(rng).domain.key for _ in range(20000))
    sizes = {k: len(v) for k, v in TRAIN.by_domain.items()}
    assert max(sizes.values()) >= 3 * min(sizes.values())  # domains differ in size ...
    expected = 20000 / len(TRAIN.domains)
    assert all(abs(n - expected) < 0.15 * expected for n in draws.values())  # ... not in weight
    assert set(draws) == set(sizes)
    assert all(TRAIN.draw(rng, lambda f: bool(f.required)).required for _ in range(200))


def test_call_requests_often_name_the_entity_in_other_words_than_the_tools() -> None:
    """A request that fits a tool often says it in other words; a near-miss request keeps its own
    entity's noun, so that a paraphrase never reads as a reason to refuse."""
    import random

    from stages.synthetic.cases import make_case
    from stages.synthetic.function_bank import TRAIN
    from stages.synthetic.phrasing import ENTITY_ALIASES

    entities = {e.key: e for d in DOMAINS for e in d.entities}
    assert set(ENTITY_ALIASES) == set(entities)
    for key, aliases in ENTITY_ALIASES.items():
        assert aliases and all(a.lower() != entities[key].en.lower() for a in aliases), key
    rng = random.Random(5)
    for case_type in ("single", "irrelevance"):
        own = other = 0
        for _ in range(300):
            case = make_case(rng, case_type, False, 0.5, TRAIN)
            text = case.turns[0].text.lower()
            wanted = [e for e in entities.values() if e.en.lower() in text
                      or any(a.lower() in text for a in ENTITY_ALIASES[e.key])]
            assert wanted, text
            if any(e.en.lower() in text for e in wanted):
                own += 1
            else:
                other += 1
        if case_type == "single":
            assert own > 60 and other > 60, (own, other)
        else:
            assert other == 0, other


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_rows_and_other_seed_other_rows() -> None:
    for kind in KINDS:
        a = [json.dumps(r, ensure_ascii=False) for r in generate_rows(kind, 60, seed=3)]
        b = [json.dumps(r, ensure_ascii=False) for r in generate_rows(kind, 60, seed=3)]
        c = [json.dumps(r, ensure_ascii=False) for r in generate_rows(kind, 60, seed=4)]
        assert a == b
        assert a != c


def test_bad_arguments_fail_loudly() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        generate_rows("sharegpt", 3, 1)
    with pytest.raises(ValueError, match="malformed_fraction"):
        generate_rows("toolace", 3, 1, malformed_fraction=1.5)


# ----------------------------------------------------------------------------- cases and defects


@pytest.mark.parametrize("kind", ["hermes_fc", "toolace", "fc_zh_hard"])
def test_every_case_type_and_defect_appears(samples: dict[str, list], kind: str) -> None:
    rows = samples[kind]
    assert {s.case_type for s in rows if s.defect is None} == set(CASE_TYPES)
    assert sum(s.defect is not None for s in rows) == 60  # exactly malformed_fraction * n
    assert {s.defect for s in rows if s.defect} == set(KIND_DEFECTS[kind]) >= set(DEFECTS)
    assert not any(s.defect for s in generate_samples(kind, 100, 1, malformed_fraction=0.0))


@pytest.mark.parametrize("kind", ["hermes_fc", "toolace", "fc_zh_hard"])
def test_clean_calls_name_offered_tools_and_validate(samples: dict[str, list], kind: str) -> None:
    checked = 0
    validators: dict[str, jsonschema.Draft202012Validator] = {}
    for s in samples[kind]:
        if s.defect is not None:
            continue
        calls, schemas = _calls_and_schemas(kind, s.row)
        for name, args in calls:
            assert name in schemas, (name, list(schemas))
            key = json.dumps(schemas[name], sort_keys=True)
            if key not in validators:  # building a validator dominates; schemas repeat across rows
                validators[key] = jsonschema.Draft202012Validator(schemas[name])
            validators[key].validate(args)
            checked += 1
    assert checked > 400


@pytest.mark.parametrize("kind", ["hermes_fc", "toolace", "fc_zh_hard"])
def test_call_defects_really_break_the_call(samples: dict[str, list], kind: str) -> None:
    for s in samples[kind]:
        if s.defect == "unknown_function":
            calls, schemas = _calls_and_schemas(kind, s.row)
            assert any(name not in schemas for name, _ in calls)
        elif s.defect == "invalid_arguments":
            calls, schemas = _calls_and_schemas(kind, s.row)
            assert any(not jsonschema.Draft202012Validator(schemas[n]).is_valid(a) for n, a in calls)
        elif s.defect in ("bad_call_syntax", "foreign_call_format"):
            with pytest.raises((ValueError, SyntaxError, json.JSONDecodeError, KeyError, AssertionError)):
                _calls_and_schemas(kind, s.row)


# ----------------------------------------------------------------------------- schemas per kind


def test_hermes_schema_and_quirks(samples: dict[str, list]) -> None:
    rows = [s.row for s in samples["hermes_fc"]]
    key_orders = {tuple(r) for r in rows}
    assert key_orders == {("id", "conversations", "tools", "category", "subcategory", "task"),
                          ("id", "conversations", "category", "subcategory", "task")}
    python_repr_tools = 0
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", r["id"])
        conv = r["conversations"]
        assert conv[0]["from"] == "system" and "<tools>\n" in conv[0]["value"]
        assert conv[0]["value"].endswith("<tool_call>\n{'arguments': <args-dict>, 'name': <function-name>}\n"
                                         "</tool_call>\n")
        assert {t["from"] for t in conv} <= {"system", "human", "gpt", "tool"}
        assert all(set(t) == {"from", "value"} for t in conv)
        python_repr_tools += "[{'type': 'function'" in conv[0]["value"]
        if "tools" in r:
            assert json.loads(r["tools"])[0]["type"] == "function"
    assert python_repr_tools > len(rows) // 2
    gpt = [t["value"] for r in rows for t in r["conversations"] if t["from"] == "gpt"]
    calls = [v for v in gpt if v.startswith("<tool_call>")]
    assert any(v.startswith("<tool_call>\n{'arguments': ") for v in calls)  # python repr, arguments first
    assert any(v.startswith('<tool_call>\n{"name": ') for v in calls)  # JSON, name first
    assert any("<tool_call>\\n" in v for v in calls)  # literal backslash-n
    assert any(v.count("<tool_call>") > 1 for v in calls)  # parallel calls: consecutive blocks
    assert any(v.endswith("\n") and not v.startswith("<") for v in gpt)  # trailing newline on text
    for r in rows:
        for t in r["conversations"]:
            if t["from"] == "tool":
                for body in TOOL_RESPONSE.findall(t["value"]):
                    assert set(json.loads(body)) == {"name", "content"}
                assert t["value"].endswith("</tool_response>\n")


def test_toolace_schema_and_quirks(samples: dict[str, list]) -> None:
    every = samples["toolace"]
    assert all(list(s.row) == ["system", "conversations"] for s in every)
    assert all(set(t) == {"from", "value"} and t["from"] in ("user", "assistant", "tool")
               for s in every for t in s.row["conversations"])
    foreign = [s.row for s in every if s.defect == "foreign_call_format"]
    assert foreign and all("Here are the tools you can use:" in r["system"] for r in foreign)
    foreign_calls = [t["value"] for r in foreign for t in r["conversations"] if t["value"].startswith("(")]
    assert foreign_calls and all("=>[" in v for v in foreign_calls)
    rows = [s.row for s in every if s.defect != "foreign_call_format"]
    systems = [r["system"] for r in rows]
    assert all(s.startswith("You are an expert in composing functions.") for s in systems)
    assert any("The current time is " in s and re.search(r"\d\d:\d\d:\d\d\.Here is", s) for s in systems)
    tools = [t for s in systems
             for t in json.loads(s[s.index("invoke:\n") + 8: s.index(". \nShould you decide")])]
    assert all(t["parameters"]["type"] == "dict" and t["required"] is None for t in tools)
    assert all(list(t) == ["name", "description", "parameters", "required"] for t in tools)
    prop_types = {p["type"] for t in tools for p in t["parameters"]["properties"].values()}
    assert {"int", "float", "dict", "string", "boolean", "array"} <= prop_types
    names = {t["name"] for t in tools}
    assert any(" " in n for n in names) and any("-" in n for n in names) and any("." in n for n in names)
    values = [t["value"] for r in rows for t in r["conversations"]]
    assert any(re.search(r"=\d+\.0[,)]", v) for v in values if v.startswith("["))  # ints written as floats
    for r in rows:
        for t in r["conversations"]:
            if t["from"] == "tool":
                results = json.loads(t["value"])
                assert all(set(x) == {"name", "results"} for x in results)
    assert any(r["conversations"][-1]["from"] == "assistant" and r["conversations"][-1]["value"].startswith("[")
               for r in rows)  # ends on a call with no result
    assert any(t["value"] == "" for r in rows for t in r["conversations"] if t["from"] == "assistant")
    assert any(v.startswith("Role definition:\n Inquirer:") for v in values)


def test_fc_zh_hard_schema_and_chinese(samples: dict[str, list]) -> None:
    rows = [s.row for s in samples["fc_zh_hard"]]
    assert all(list(r) == ["functions", "conversation"] and isinstance(r["functions"], str) for r in rows)
    struct = string = 0
    for r in rows:
        fns = json.loads(r["functions"])
        assert all(set(f) == {"name", "description", "parameters"} for f in fns)
        for m in r["conversation"]:
            assert list(m) == ["content", "function_call", "name", "role"]
            assert m["role"] in ("system", "user", "assistant", "function")
            if m["role"] == "function":
                assert m["name"] and m["function_call"] is None
            else:
                assert m["name"] is None
            if m["function_call"] is not None:
                assert m["role"] == "assistant" and m["content"] is None
                struct += isinstance(m["function_call"], dict)
                string += isinstance(m["function_call"], str)
    assert struct > 0 and string > struct  # mostly JSON strings, sometimes a struct
    users = [m["content"] for r in rows for m in r["conversation"] if m["role"] == "user" and m["content"]]
    assert sum(bool(CJK.search(u)) for u in users) / len(users) > 0.95


def test_openhermes_schema(samples: dict[str, list]) -> None:
    rows = [s for s in samples["openhermes"]]
    assert len({tuple(sorted(s.row)) for s in rows}) >= 3  # top-level keys vary by row
    assert any("system_prompt" in s.row for s in rows)
    assert any(s.row["conversations"][0]["from"] == "system" for s in rows)
    assert any(s.row["conversations"][0] == {"from": "system", "value": "", "weight": None} for s in rows)
    for s in rows:
        conv = s.row["conversations"]
        assert all(list(t) == ["from", "value", "weight"] and t["from"] in ("system", "human", "gpt") for t in conv)
        assert all(t["weight"] in (None, 1.0) for t in conv)
        if s.defect is None:
            turns = [t["from"] for t in conv if t["from"] != "system"]
            assert turns == ["human", "gpt"] * (len(turns) // 2) and all(t["value"] for t in conv[1:])
    assert {s.defect for s in rows if s.defect} == set(CHAT_DEFECTS)


def test_wildchat_schema(samples: dict[str, list]) -> None:
    top = ["conversation_hash", "model", "timestamp", "conversation", "turn", "language", "openai_moderation",
           "detoxify_moderation", "toxic", "redacted", "state", "country", "hashed_ip", "header"]
    item = ["content", "country", "hashed_ip", "header", "language", "redacted", "role", "state", "timestamp",
            "toxic", "turn_identifier"]
    languages = Counter()
    for s in samples["wildchat"]:
        r = s.row
        assert list(r) == top
        dt.datetime.fromisoformat(r["timestamp"])
        assert len(r["openai_moderation"]) == len(r["detoxify_moderation"]) == len(r["conversation"])
        cats = r["openai_moderation"][0]["categories"]
        assert len(cats) == 18 and {"self-harm", "self_harm", "sexual/minors", "sexual_minors"} <= set(cats)
        assert set(r["detoxify_moderation"][0]) == {"identity_attack", "insult", "obscene", "severe_toxicity",
                                                    "sexual_explicit", "threat", "toxicity"}
        assert list(r["header"]) == ["accept-language", "user-agent"]
        for m in r["conversation"]:
            assert list(m) == item and m["role"] in ("user", "assistant")
            if m["role"] == "user":
                assert m["timestamp"] is None and m["hashed_ip"] == r["hashed_ip"]
            else:
                assert m["hashed_ip"] is None
                dt.datetime.fromisoformat(m["timestamp"])
        languages[r["language"]] += 1
    assert languages["English"] > languages["Chinese"] > 0


# ----------------------------------------------------------------------------- chat answers


def test_chat_answers_are_correct() -> None:
    import random

    rng = random.Random(0)
    ops = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__, "÷": int.__floordiv__}
    checked = Counter()
    for _ in range(600):
        q, a = qa(rng)
        if m := re.fullmatch(r"What is (\d+) ([-+×÷]) (\d+)\?", q):
            x, op, y = int(m[1]), m[2], int(m[3])
            assert a == f"{x} {op} {y} = {ops[op](x, y)}."
            if op == "÷":
                assert x % y == 0
            checked["arith"] += 1
        elif m := re.fullmatch(r"What day of the week was (\d{4}-\d\d-\d\d)\?", q):
            assert dt.date.fromisoformat(m[1]).strftime("%A") in a
            checked["weekday"] += 1
        elif m := re.fullmatch(r'Reverse the string "(\w+)"\.', q):
            assert f'"{m[1][::-1]}"' in a
            checked["reverse"] += 1
        elif m := re.fullmatch(r"What is (-?\d+) °C in Fahrenheit\?", q):
            assert a.endswith(f"= {int(m[1]) * 9 / 5 + 32:g} °F.")
            checked["temp"] += 1
        elif m := re.fullmatch(r"Convert (\d+) kilometres to miles\.", q):
            assert a.endswith(f"≈ {int(m[1]) * 0.621371:.2f} miles.")
            checked["km"] += 1
        elif q == "What is the capital of Australia?":
            assert a == "The capital of Australia is Canberra."
            checked["capital"] += 1
    assert checked["arith"] > 10 and checked["weekday"] > 3 and checked["reverse"] > 3 and checked["temp"] > 3


def test_function_results_echo_the_call(samples: dict[str, list]) -> None:
    for s in samples["toolace"]:
        if s.defect is not None:
            continue
        conv = s.row["conversations"]
        for i, t in enumerate(conv):
            if t["from"] == "tool":
                calls = _toolace_calls(conv[i - 1]["value"])
                results = json.loads(t["value"])
                assert [n for n, _ in calls] == [x["name"] for x in results]
                assert conv[i + 1]["from"] == "assistant" and conv[i + 1]["value"]


def test_data_modules_do_not_import_torch() -> None:
    code = "import sys, stages.raw, stages.synthetic.generator as g; g.generate_rows('hermes_fc', 5, 1); " \
           "sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def _turns(kind: str, row: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, what) per turn: what is "call", "result:<names>", "text" or "empty"."""
    out = []
    if kind == "fc_zh_hard":
        for m in row["conversation"][1:]:
            if m["role"] == "function":
                out.append(("tool", f"result:{m['name']}"))
            elif m["function_call"] is not None:
                out.append(("assistant", "call"))
            else:
                out.append((m["role"], "text" if m["content"] else "empty"))
        return out
    roles = {"human": "user", "gpt": "assistant"}
    for t in row["conversations"]:
        role = roles.get(t["from"], t["from"])
        if role == "system":
            continue
        if role == "tool":
            names = ([json.loads(b)["name"] for b in TOOL_RESPONSE.findall(t["value"])] if kind == "hermes_fc"
                     else [x["name"] for x in json.loads(t["value"])])
            out.append(("tool", "result:" + ",".join(names)))
        elif role == "assistant" and (t["value"].startswith("<tool_call>") or t["value"].startswith("[")):
            out.append(("assistant", "call"))
        else:
            out.append((role, "text" if t["value"] else "empty"))
    return out


@pytest.mark.parametrize("kind", ["hermes_fc", "toolace", "fc_zh_hard"])
def test_conversation_defects_are_visible(samples: dict[str, list], kind: str) -> None:
    for s in samples[kind]:
        turns = _turns(kind, s.row)
        after_call = [turns[i + 1] for i, t in enumerate(turns[:-1]) if t[1] == "call"]
        if s.defect is None:
            assert turns[0] == ("user", "text")
            assert all(what != "empty" for _, what in turns)
            assert all(nxt[0] == "tool" or nxt == ("assistant", "call") for nxt in after_call)
        elif s.defect == "wrong_role_order":
            assert turns[0][0] == "assistant"
        elif s.defect == "empty_turn":
            assert ("assistant", "empty") in turns
        elif s.defect == "missing_tool_result":
            assert ("assistant", "text") in after_call
        elif s.defect == "result_mismatch":
            calls, _ = _calls_and_schemas(kind, s.row)
            called = {n for n, _ in calls}
            results = {n for _, w in turns if w.startswith("result:") for n in w[7:].split(",")}
            assert results - called


# ----------------------------------------------------------------------------- longer tool lists


def test_longer_lists_keep_the_cases_tools_and_add_none_that_fit() -> None:
    from stages.synthetic.cases import make_case
    from stages.synthetic.generator import longer_list
    from stages.synthetic.rng import FastRandom

    rng, list_rng = FastRandom("cases"), FastRandom("lists")
    grown = 0
    for i in range(400):
        case = make_case(rng, CASE_TYPES[i % len(CASE_TYPES)], i % 5 == 0, 0.5)
        longer = longer_list(list_rng, case, {"share": 1.0, "tools": [6, 10]})
        assert [f for f in longer.tools if f in case.tools] == case.tools  # its own, in their order
        added = [f for f in longer.tools if f not in case.tools]
        assert 6 <= len(longer.tools) <= 10 or (not added and len(case.tools) >= 10)
        own = {f.entity.key for f in case.tools} | set(case.avoid)
        assert not {f.entity.key for f in added} & own  # no added tool does what an offered one or the refused request does
        assert len({f.entity.key for f in added}) == len(added)
        assert longer.turns is case.turns and longer.case_type == case.case_type
        grown += bool(added)
        if case.case_type == "irrelevance":
            assert case.avoid  # the refused request's entity
    assert grown > 350


def test_tool_lists_off_or_at_share_zero_changes_no_byte_and_on_grows_lists() -> None:
    from stages.synthetic.generator import iter_samples

    def rows(tool_lists: Any) -> list[str]:
        return [json.dumps(s.row, ensure_ascii=False) for s in iter_samples("hermes_fc", 80, 5, 0.1,
                                                                           tool_lists=tool_lists)]

    plain = rows(None)
    assert rows({"share": 0.0, "tools": [6, 12]}) == plain
    grown = rows({"share": 0.5, "tools": [6, 12]})
    assert grown != plain and len(grown) == len(plain)
    assert sum(len(g) > len(p) for g, p in zip(grown, plain, strict=True)) > 20
    with pytest.raises(ValueError, match="tool_lists"):
        list(iter_samples("openhermes", 3, 1, tool_lists={"share": 0.5, "tools": [6, 12]}))


def test_case_weights_reweight_the_named_types_and_default_to_the_same_bytes() -> None:
    from stages.synthetic.generator import iter_samples, mixed_case_weights

    def samples(weights: Any) -> list[Any]:
        return list(iter_samples("toolace", 300, 5, 0.0, case_weights=weights))

    plain = samples(None)
    # the defaults named explicitly draw the same cases: the same bytes
    assert [s.row for s in samples({"chain": 6, "single": 10})] == [s.row for s in plain]
    chains = Counter(s.case_type for s in samples({"chain": 60}))
    assert chains["chain"] > 3 * Counter(s.case_type for s in plain)["chain"]
    only = Counter(s.case_type for s in samples({t: 0 for t in CASE_TYPES if t != "general"}))
    assert set(only) == {"general"}
    with pytest.raises(ValueError, match="unknown case type"):
        mixed_case_weights({"chains": 3})
    with pytest.raises(ValueError, match=">= 0"):
        mixed_case_weights({"chain": -1})
    with pytest.raises(ValueError, match="above 0"):
        mixed_case_weights({t: 0 for t in CASE_TYPES})
    with pytest.raises(ValueError, match="case_weights"):
        list(iter_samples("openhermes", 3, 1, case_weights={"chain": 3}))


def test_raw_config_rejects_unknown_case_types() -> None:
    from pydantic import ValidationError

    from stages.raw import SyntheticOrigin

    origin = {"type": "synthetic", "rows": 3, "seed": 1, "malformed_fraction": 0.0}
    assert SyntheticOrigin(**origin, case_weights={"chain": 18}).case_weights == {"chain": 18}
    with pytest.raises(ValidationError, match="unknown case type"):
        SyntheticOrigin(**origin, case_weights={"chian": 18})
