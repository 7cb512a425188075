"""Normalizers: raw rows written here in each source's hub schema -> OpenAI messages and tools."""

from __future__ import annotations

import json
import sys

import pytest

from stages.filter_rules import Drop
from stages.parsing.call_list import parse_call_list
from stages.parsing.json_codec import FAST_JSON, STDLIB_JSON, NeedsStdlibJson
from stages.parsing.literals import parse_loose
from stages.parsing.parsers import Parsers, cached_parsers
from stages.parsing.tools import fix_schema, sanitize_name
from stages.row_pipeline import content_key, prepare_row

# ---------------------------------------------------------------------------------------------
# Fixtures in the raw schemas (hand-written; quirks as described for each hub dataset)

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> "
    "XML tags. You may call one or more functions.\n<tools>\n"
    "[{'type': 'function', 'function': {'name': 'book_table', 'description': 'Books a table.', 'parameters': "
    "{'type': 'object', 'properties': {'venue': {'type': 'string'}, 'guests': {'type': 'integer'}, "
    "'terrace': {'type': 'boolean'}}, 'required': ['venue', 'guests']}}}, "
    "{'type': 'function', 'function': {'name': 'Venue.lookup', 'description': 'Finds a venue.', 'parameters': "
    "{'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']}}}]\n</tools>\n"
    "For each function call return a json object with function name and arguments within <tool_call> "
    "</tool_call> tags with the following schema:\n<tool_call>\n{'arguments': <args-dict>, 'name': "
    "<function-name>}\n</tool_call>\n"
)


def hermes_row(gpt_value: str, tool_value: str | None = None, final: str | None = "Done: table booked.") -> dict:
    turns = [
        {"from": "system", "value": HERMES_SYSTEM},
        {"from": "human", "value": "Book a table for 4 at Luigi's, terrace please.\n"},
        {"from": "gpt", "value": gpt_value},
    ]
    if tool_value is not None:
        turns.append({"from": "tool", "value": tool_value})
    if final is not None:
        turns.append({"from": "gpt", "value": final})
    return {"id": "0b7c1f7e-aaaa-4bbb-8ccc-123456789abc", "conversations": turns,
            "category": "Hospitality", "subcategory": "Restaurants", "task": "Book a table"}


HERMES_CALL = ("<tool_call>\n{'arguments': {'venue': \"Luigi's\", 'guests': 4, 'terrace': True}, "
               "'name': 'book_table'}\n</tool_call>\n")
HERMES_RESULT = '<tool_response>\n{"name": "book_table", "content": {"confirmed": true, "ref": "B12"}}\n</tool_response>\n'

TOOLACE_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. \n"
    "The current time is 2024-05-01 10:00:00.Here is a list of functions in JSON format that you can invoke:\n"
    + json.dumps([
        {"name": "Get Stock Quote", "description": "Quote for a ticker.", "parameters": {"type": "dict", "properties": {
            "symbol": {"description": "Ticker", "type": "string"}, "days": {"description": "Window", "type": "int"},
            "ratio": {"description": "Ratio", "type": "float", "default": 1}}, "required": ["symbol"]}, "required": None},
        {"name": "/quotes/postcode/GetQuote", "description": "Insurance quote.", "parameters": {"type": "dict",
            "properties": {"postcode": {"type": "string"}, "extras": {"type": "array", "items": {"type": "dict",
                "properties": {"k": {"type": "str"}}}}}, "required": ["postcode"]}, "required": None},
        {"name": "VRAnimator.animateScene", "description": "Animate.", "parameters": {"type": "dict", "properties": {},
            "required": []}, "required": None},
    ])
    + ". \nShould you decide to return the function call(s). \nPut it in the format of "
    "[func1(params_name=params_value, params_name2=params_value2...), func2(params)]\n\nNO other text MUST be included. \n"
)


def toolace_row(assistant: str, tool: str | None = None, final: str | None = None) -> dict:
    turns = [{"from": "user", "value": "Quote for AAPL over 30 days, and animate the scene."},
             {"from": "assistant", "value": assistant}]
    if tool is not None:
        turns.append({"from": "tool", "value": tool})
    if final is not None:
        turns.append({"from": "assistant", "value": final})
    return {"system": TOOLACE_SYSTEM, "conversations": turns}


ZH_FUNCTIONS = json.dumps([{"name": "get_weather", "description": "查询天气", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}], ensure_ascii=False)


def zh_row(function_call, result_name: str = "get_weather") -> dict:
    return {"functions": ZH_FUNCTIONS, "conversation": [
        {"content": "你是一个助手。", "function_call": None, "name": None, "role": "system"},
        {"content": "北京天气怎么样？", "function_call": None, "name": None, "role": "user"},
        {"content": None, "function_call": function_call, "name": None, "role": "assistant"},
        {"content": '{"temp": 21}', "function_call": None, "name": result_name, "role": "function"},
        {"content": "北京今天21度。", "function_call": None, "name": None, "role": "assistant"},
    ]}


OPENHERMES = {"conversations": [{"from": "system", "value": "", "weight": None},
                                {"from": "human", "value": "What is 7 * 28?", "weight": 0.0},
                                {"from": "gpt", "value": "7 * 28 = 196.", "weight": 1.0}],
              "source": "airoboros2.2", "category": "orca", "system_prompt": "Answer briefly.", "skip_prompt_formatting": False}

WILDCHAT = {"conversation_hash": "ab12", "model": "gpt-4-0314", "timestamp": "2023-04-09 00:02:53+00:00",
            "conversation": [
                {"content": "Hi, name a prime.", "country": "France", "hashed_ip": "x", "header": {"accept-language": "fr", "user-agent": "ua"},
                 "language": "English", "redacted": False, "role": "user", "state": None, "timestamp": None, "toxic": False, "turn_identifier": 1},
                {"content": "7 is prime.", "country": None, "hashed_ip": None, "header": None, "language": "English",
                 "redacted": False, "role": "assistant", "state": None, "timestamp": "2023-04-09 00:02:53+00:00", "toxic": False, "turn_identifier": 1}],
            "turn": 1, "language": "English", "openai_moderation": [], "detoxify_moderation": [], "toxic": False,
            "redacted": False, "state": None, "country": "France", "hashed_ip": "x", "header": {}}


def run(kind: str, row, parsers: Parsers | None = None):
    line = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
    row = prepare_row(kind, line, parsers or Parsers())
    assert [n for n, _ in row.schemas] == [t["function"]["name"] for t in json.loads(row.tools)]
    assert row.key == content_key(row.messages, row.tools)
    return json.loads(row.messages), json.loads(row.tools), row.calls


def rule_of(kind: str, row) -> str:
    with pytest.raises(Drop) as info:
        run(kind, row)
    return info.value.rule


# ---------------------------------------------------------------------------------------------
# hermes_fc


def test_hermes_python_repr_tools_calls_and_results():
    messages, tools, calls = run("hermes_fc", hermes_row(HERMES_CALL, HERMES_RESULT))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert "<tools>" not in messages[0]["content"] and messages[0]["content"].startswith("You are a function")
    assert [t["function"]["name"] for t in tools] == ["book_table", "Venue_lookup"]
    call = messages[2]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"venue": "Luigi's", "guests": 4, "terrace": True}
    assert messages[3] == {"role": "tool", "tool_call_id": call["id"], "content": '{"confirmed":true,"ref":"B12"}'}
    assert calls == [("book_table", call["function"]["arguments"])]


def test_hermes_literal_backslash_n_and_name_nested_in_arguments():
    gpt = '<tool_call>\\n{"arguments": {"city": \'Rome\', "name": "Venue.lookup"}}\\n</tool_call>'
    messages, _, calls = run("hermes_fc", hermes_row(gpt, None, None))
    assert messages[-1]["tool_calls"][0]["function"]["name"] == "Venue_lookup"
    assert json.loads(calls[0][1]) == {"city": "Rome"}


def test_hermes_parallel_calls_and_optional_tools_column():
    two = HERMES_CALL + "<tool_call>\n{\"name\": \"Venue.lookup\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n"
    results = HERMES_RESULT + '<tool_response>\n{"name": "Venue.lookup", "content": {"id": 3}}\n</tool_response>\n'
    row = hermes_row(two, results)
    row["tools"] = json.dumps([{"type": "function", "function": {"name": "book_table", "description": "",
                                "parameters": {"type": "object", "properties": {}}}}, {"type": "function", "function":
                                {"name": "Venue.lookup", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    messages, tools, calls = run("hermes_fc", row)
    assert len(messages[2]["tool_calls"]) == 2 and [m["role"] for m in messages[3:5]] == ["tool", "tool"]
    assert messages[4]["tool_call_id"] == messages[2]["tool_calls"][1]["id"]
    assert tools[0]["function"]["parameters"]["properties"] == {}  # the column wins over the <tools> block


def test_hermes_json_mode_row_is_kept_as_chat():
    row = {"id": "x", "conversations": [
        {"from": "system", "value": "Answer in JSON. Here's the json schema you must adhere to:\n<schema>\n{'type': 'object'}\n</schema>\n"},
        {"from": "human", "value": "Give me a movie."}, {"from": "gpt", "value": '{"title": "Heat"}'}],
        "category": "Media", "subcategory": "Movies", "schema": '{"type": "object"}'}
    messages, tools, calls = run("hermes_fc", row)
    assert tools == [] and calls == [] and messages[-1] == {"role": "assistant", "content": '{"title": "Heat"}'}


def test_hermes_malformed_rows_are_dropped_with_their_rule():
    assert rule_of("hermes_fc", hermes_row("<tool_call>\n{'name': 'book_table', 'arguments': {'venue': \n</tool_call>", None, None)) == "bad_call"
    wrong = HERMES_RESULT.replace('"book_table"', '"other_fn"')
    assert rule_of("hermes_fc", hermes_row(HERMES_CALL, wrong)) == "tool_result_mismatch"
    assert rule_of("hermes_fc", hermes_row(HERMES_CALL, None, "No result came back.")) == "role_order"
    assert rule_of("hermes_fc", hermes_row("  \n", None, None)) == "empty_turn"
    bad_tools = hermes_row(HERMES_CALL, HERMES_RESULT)
    bad_tools["conversations"][0]["value"] = "sys\n<tools>\n[{'name': 'f', 'parameters': {'type': 'dict', 'properties': {'a': {'type': 'frobnicate'}}}}]\n</tools>"
    assert rule_of("hermes_fc", bad_tools) == "bad_tool_schema"
    assert rule_of("hermes_fc", {"id": "x", "conversations": "not a list"}) == "unparseable"
    assert rule_of("hermes_fc", "{not json") == "unparseable"
    assert rule_of("hermes_fc", "[1, 2]") == "unparseable"


# ---------------------------------------------------------------------------------------------
# toolace


def test_toolace_tools_in_system_prompt_with_python_type_names():
    messages, tools, calls = run("toolace", toolace_row('[Get Stock Quote(symbol="AAPL", days=30.0, ratio=0.5), VRAnimator.animateScene()]'))
    assert messages[0] == {"role": "system", "content": "You are an expert in composing functions. You are given a question "
                           "and a set of possible functions. \nThe current time is 2024-05-01 10:00:00."}
    names = [t["function"]["name"] for t in tools]
    assert names == ["Get_Stock_Quote", "quotes_postcode_GetQuote", "VRAnimator_animateScene"]
    params = tools[0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["days"]["type"] == "integer"
    assert params["properties"]["ratio"]["type"] == "number" and "required" in params
    assert "required" not in tools[0] and "required" not in tools[0]["function"]  # the stray "required": null
    nested = tools[1]["function"]["parameters"]["properties"]["extras"]["items"]
    assert nested["type"] == "object" and nested["properties"]["k"]["type"] == "string"
    assert [n for n, _ in calls] == ["Get_Stock_Quote", "VRAnimator_animateScene"]
    assert json.loads(calls[0][1]) == {"symbol": "AAPL", "days": 30, "ratio": 0.5}  # 30.0 -> 30
    assert json.loads(calls[1][1]) == {}


def test_toolace_call_values_are_literals_never_code():
    calls = parse_call_list('[f(a="x, y(z)", b=[{"k": true, "n": null}], c=-2.5), g/h.i-j(flag=false)]')
    assert calls == [("f", {"a": "x, y(z)", "b": [{"k": True, "n": None}], "c": -2.5}), ("g/h.i-j", {"flag": False})]
    # One call whose string holds what looks like a call boundary; python spellings read too.
    assert parse_call_list('[Get It(q="a), B(c=1", n=2.0)]') == [("Get It", {"q": "a), B(c=1", "n": 2})]
    assert parse_call_list("[f(a=True, b='s', c=None)]") == [("f", {"a": True, "b": "s", "c": None})]
    for bad in ('[f(a=__import__("os").system("true"))]', "[f(a=1+1)]", "[f(1)]", "[f(**x)]", "[f(a=1]",
                "[f(a=1, a=2)]", "[f(a=NaN)]", "[f(a=1), g(b=2]"):
        with pytest.raises((ValueError, SyntaxError)):
            parse_call_list(bad)


def test_toolace_results_text_answers_and_bad_variants():
    results = json.dumps([{"name": "Get Stock Quote", "results": {"price": 190.1}}])
    messages, _, _ = run("toolace", toolace_row('[Get Stock Quote(symbol="AAPL")]', results, "AAPL is at 190.1."))
    assert messages[3]["role"] == "tool" and json.loads(messages[3]["content"]) == {"price": 190.1}
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"]
    text, _, calls = run("toolace", toolace_row("None of the functions can answer that."))
    assert calls == [] and text[-1]["content"] == "None of the functions can answer that."
    # Ending on a call without its result is allowed (ToolACE rows often do).
    assert run("toolace", toolace_row('[Get Stock Quote(symbol="AAPL")]'))[2]
    wrong = json.dumps([{"name": "VRAnimator.animateScene", "results": {}}])
    assert rule_of("toolace", toolace_row('[Get Stock Quote(symbol="AAPL")]', wrong, "ok")) == "tool_result_mismatch"
    assert rule_of("toolace", toolace_row('[Get Stock Quote(symbol="AAPL", 5)]')) == "bad_call"
    assert rule_of("toolace", toolace_row("")) == "empty_turn"
    yaml_like = {"system": "Here are the tools you can use:\n- NutriTracker.getDailyIntake: user_id (string)\n",
                 "conversations": [{"from": "user", "value": "intake?"},
                                   {"from": "assistant", "value": "(NutriTracker.getDailyIntake=>['user_id'--'1'])"}]}
    assert rule_of("toolace", yaml_like) == "unsupported_tool_format"
    assert rule_of("toolace", {"system": 3, "conversations": []}) == "unparseable"


# Shapes of real ToolACE rows (issue 13), each in a minimal row written here.
REAL_NAMES_TOOLS = [
    {"name": "Get User's Instagram Stories", "description": "Stories.", "parameters": {"type": "dict", "properties": {
        "username": {"type": "string"}}, "required": ["username"]}, "required": None},
    {"name": "Latest SPAC Deals, IPOs, Closings", "description": "SPAC events.", "parameters": {"type": "dict",
        "properties": {"event": {"type": "string"}}, "required": ["event"]}, "required": None},
    {"name": "GET /categories/{categoryId}/v1", "description": "A category.", "parameters": {"type": "dict",
        "properties": {"categoryId": {"type": "string"}}, "required": ["categoryId"]}, "required": None},
    {"name": "Current Weather (Detailed)", "description": "Weather.", "parameters": {"type": "dict", "properties": {
        "lat": {"type": "string"}}, "required": ["lat"]}, "required": None},
    {"name": "Get Account", "description": "A Riot account.", "parameters": {"type": "dict", "properties": {
        "riot-id": {"type": "string"}, "$top": {"type": "int"}}, "required": ["riot-id"]}, "required": None},
]


def toolace_system(tools: list, head: str = TOOLACE_SYSTEM.split("Here is a list")[0],
                   marker: str = "Here is a list of functions in JSON format that you can invoke:\n",
                   tail: str = TOOLACE_SYSTEM[TOOLACE_SYSTEM.index(". \nShould you decide"):]) -> str:
    return head + marker + json.dumps(tools) + tail


def toolace_turns(system: str, *turns: tuple[str, str]) -> dict:
    return {"system": system, "conversations": [{"from": who, "value": value} for who, value in turns]}


@pytest.mark.parametrize("parsers", [Parsers(), cached_parsers()], ids=["plain", "cached"])
def test_toolace_real_tool_names_are_calls_not_text(parsers):
    """Names with quotes, commas, braces or parentheses, and argument names with - or $, are calls
    (not assistant text, not bad_call); names become valid OpenAI names the same way in the tools
    and the calls, and argument names stay exactly as the schema declares them."""
    system = toolace_system(REAL_NAMES_TOOLS)
    cases = [
        ('[Get User\'s Instagram Stories(username="@x")]', "Get_User_s_Instagram_Stories", {"username": "@x"}),
        ('[Latest SPAC Deals, IPOs, Closings(event="merger")]', "Latest_SPAC_Deals_IPOs_Closings", {"event": "merger"}),
        ('[GET /categories/{categoryId}/v1(categoryId="5")]', "GET_categories_categoryId_v1", {"categoryId": "5"}),
        ('[Current Weather (Detailed)(lat="1")]', "Current_Weather_Detailed", {"lat": "1"}),
        ('[Get Account(riot-id="Phoenix", $top=2.0)]', "Get_Account", {"riot-id": "Phoenix", "$top": 2}),
    ]
    for text, name, args in cases:
        result = json.dumps([{"name": REAL_NAMES_TOOLS[[c[0] for c in cases].index(text)]["name"], "results": {"ok": 1}}])
        messages, tools, calls = run("toolace", toolace_turns(system, ("user", "q"), ("assistant", text),
                                                             ("tool", result), ("assistant", "Done.")), parsers)
        assert [t["function"]["name"] for t in tools] == [c[1] for c in cases]
        call = messages[2]["tool_calls"]
        assert messages[2]["content"] is None and len(call) == 1, text
        assert call[0]["function"]["name"] == name and json.loads(call[0]["function"]["arguments"]) == args
        assert messages[3]["tool_call_id"] == call[0]["id"]  # the result links to the call
        assert calls == [(name, call[0]["function"]["arguments"])]
    props = tools[4]["function"]["parameters"]["properties"]
    assert list(props) == ["riot-id", "$top"]
    # Several calls, the comma-named tool among them.
    _, _, calls = run("toolace", toolace_turns(system, ("user", "q"), ("assistant",
        '[Latest SPAC Deals, IPOs, Closings(event="a"), Get User\'s Instagram Stories(username="b"), '
        'Current Weather (Detailed)(lat="2")]')), parsers)
    assert [n for n, _ in calls] == ["Latest_SPAC_Deals_IPOs_Closings", "Get_User_s_Instagram_Stories",
                                     "Current_Weather_Detailed"]


def test_toolace_prose_then_calls_keeps_the_calls():
    system = toolace_system(REAL_NAMES_TOOLS)
    value = 'Let\'s proceed:\n\n[Get User\'s Instagram Stories(username="@x")]'
    messages, _, calls = run("toolace", toolace_turns(system, ("user", "q"), ("assistant", value)))
    assert messages[2]["content"] == "Let's proceed:"
    assert messages[2]["tool_calls"][0]["function"]["name"] == "Get_User_s_Instagram_Stories"
    assert [n for n, _ in calls] == ["Get_User_s_Instagram_Stories"]
    # Prose that only mentions brackets, or calls something not offered, stays text.
    for text in ("See [the docs](http://x) and [1, 2].", "Try [Unknown Tool(a=1)]", "Use [Get Account] later."):
        messages, _, calls = run("toolace", toolace_turns(system, ("user", "q"), ("assistant", text)))
        assert messages[2] == {"role": "assistant", "content": text} and calls == []


def test_toolace_chinese_marker_and_text_after_the_list():
    zh_head = ("你是一个组合函数的专家。你会得到一个问题和一组可能的函数。\n"
               "如果你决定调用任何函数，你必须将其格式化为[func_name1(params_name1=params_value1, params_name2=params_value2...), "
               "func_name2(params)]\n你不应该在回复中包含任何其他文本。\n")
    system = toolace_system(REAL_NAMES_TOOLS[:1], head=zh_head, marker="以下是可以调用的工具的JSON格式列表:\n",
                            tail="\n")
    messages, tools, calls = run("toolace", toolace_turns(system, ("user", "看看@x的快拍"),
                                                         ("assistant", '[Get User\'s Instagram Stories(username="@x")]')))
    assert [t["function"]["name"] for t in tools] == ["Get_User_s_Instagram_Stories"]
    assert messages[0] == {"role": "system", "content": "你是一个组合函数的专家。你会得到一个问题和一组可能的函数。"}
    assert calls and calls[0][0] == "Get_User_s_Instagram_Stories"
    note = "\n\n Note that the provided function is in Java 8 SDK syntax or JavaScript."
    system = toolace_system(REAL_NAMES_TOOLS[:1]) + note
    messages, _, _ = run("toolace", toolace_turns(system, ("user", "q"), ("assistant", "No.")))
    assert messages[0]["content"] == TOOLACE_SYSTEM.split("Here is a list")[0].strip() + "\n\n" + note.strip()
    # Without the note: exactly the text before the list, as before.
    messages, _, _ = run("toolace", toolace_turns(toolace_system(REAL_NAMES_TOOLS[:1]), ("user", "q"), ("assistant", "No.")))
    assert messages[0]["content"] == TOOLACE_SYSTEM.split("Here is a list")[0].strip()


def test_hermes_enum_of_none_is_fixed_and_counted_not_a_reason_to_drop():
    system = HERMES_SYSTEM.replace("'terrace': {'type': 'boolean'}",
                                   "'terrace': {'type': 'boolean'}, 'area': {'type': 'string', 'enum': [None]}")
    row = hermes_row(HERMES_CALL.replace("'terrace': True", "'terrace': True, 'area': 'garden'"), HERMES_RESULT)
    row["conversations"][0]["value"] = system
    line = json.dumps(row)
    prepared = prepare_row("hermes_fc", line, cached_parsers())
    assert prepared.fixes == ("enum_null",)
    area = json.loads(prepared.tools)[0]["function"]["parameters"]["properties"]["area"]
    assert area == {"type": "string"}
    assert prepare_row("hermes_fc", json.dumps(hermes_row(HERMES_CALL, HERMES_RESULT)), Parsers()).fixes == ()
    fixes: list[str] = []
    assert fix_schema({"type": ["string", "null"], "enum": ["a", None]}, fixes) == {"type": ["string", "null"],
                                                                                  "enum": ["a", None]}
    assert fix_schema({"type": "string", "enum": ["a", None]}, fixes) == {"type": "string", "enum": ["a"]}
    assert fix_schema({"enum": [None]}, fixes) == {} and fixes == ["enum_null", "enum_null"]


# ---------------------------------------------------------------------------------------------
# fc_zh_hard, openhermes, wildchat


@pytest.mark.parametrize("function_call", [
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"北京\\"}"}',  # string form
    {"arguments": '{"city": "北京"}', "name": "get_weather"},  # struct form of the sibling sets
])
def test_fc_zh_hard_legacy_function_call_string_or_struct(function_call):
    messages, tools, calls = run("fc_zh_hard", zh_row(function_call))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert tools[0]["function"]["description"] == "查询天气"
    # Compact JSON (the project's byte form of arguments), non-ASCII kept, not \\u-escaped.
    assert calls == [("get_weather", '{"city":"北京"}')]
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"]


def test_fc_zh_hard_consecutive_calls_merge_and_bad_rows_drop():
    row = zh_row({"name": "get_weather", "arguments": '{"city": "北京"}'})
    row["conversation"].insert(3, {"content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "上海"}'},
                                   "name": None, "role": "assistant"})
    row["conversation"].insert(5, {"content": '{"temp": 25}', "function_call": None, "name": "get_weather", "role": "function"})
    messages, _, calls = run("fc_zh_hard", row)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert len(calls) == 2
    assert rule_of("fc_zh_hard", zh_row('{"name": "get_weather", "arguments": "{bad')) == "bad_call"
    assert rule_of("fc_zh_hard", zh_row('{"name": "get_weather", "arguments": "{}"}', result_name="other")) == "tool_result_mismatch"


def zh_message(role: str, content=None, function_call=None, name=None) -> dict:
    return {"content": content, "function_call": function_call, "name": name, "role": role}


def zh_call(city: str) -> str:
    return json.dumps({"name": "get_weather", "arguments": json.dumps({"city": city}, ensure_ascii=False)},
                      ensure_ascii=False)


def test_fc_zh_hard_parallel_form_and_interleaved_form_are_both_read():
    head = [zh_message("system", "你是一个助手。"), zh_message("user", "北京和上海天气？")]
    # The parallel form: consecutive calls, then their results in order -> one turn with two calls.
    parallel = {"functions": ZH_FUNCTIONS, "conversation": head + [
        zh_message("assistant", function_call=zh_call("北京")), zh_message("assistant", function_call=zh_call("上海")),
        zh_message("function", '{"temp": 21}', name="get_weather"), zh_message("function", '{"temp": 25}', name="get_weather"),
        zh_message("assistant", "北京21度，上海25度。")]}
    messages, _, calls = run("fc_zh_hard", parallel)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    ids = [c["id"] for c in messages[2]["tool_calls"]]
    assert [json.loads(c["function"]["arguments"])["city"] for c in messages[2]["tool_calls"]] == ["北京", "上海"]
    assert [messages[3]["tool_call_id"], messages[4]["tool_call_id"]] == ids  # results linked in order
    assert [messages[3]["content"], messages[4]["content"]] == ['{"temp": 21}', '{"temp": 25}']
    assert len(calls) == 2
    # Results without a name are linked by order too.
    unnamed = json.loads(json.dumps(parallel))
    for m in unnamed["conversation"]:
        if m["role"] == "function":
            m["name"] = None
    assert [m.get("tool_call_id") for m in run("fc_zh_hard", unnamed)[0][3:5]] == [
        c["id"] for c in run("fc_zh_hard", unnamed)[0][2]["tool_calls"]]
    # The interleaved form (call, result, call, result) stays two call turns.
    interleaved = {"functions": ZH_FUNCTIONS, "conversation": head + [
        zh_message("assistant", function_call=zh_call("北京")), zh_message("function", '{"temp": 21}', name="get_weather"),
        zh_message("assistant", function_call=zh_call("上海")), zh_message("function", '{"temp": 25}', name="get_weather"),
        zh_message("assistant", "北京21度，上海25度。")]}
    messages, _, calls = run("fc_zh_hard", interleaved)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert len(calls) == 2


def test_fc_zh_hard_writer_renders_parallel_calls_in_the_parallel_form():
    from stages.synthetic.generator import generate_samples

    seen = 0
    for sample in generate_samples("fc_zh_hard", 400, seed=3, malformed_fraction=0.0):
        conversation = sample.row["conversation"]
        kinds = "".join("c" if m["function_call"] is not None else "f" if m["role"] == "function" else "t"
                        for m in conversation)
        # Never a result between two calls of one turn: calls come in a run, then their results.
        # (A chain's second call follows the first one's result: a turn of its own.)
        assert "cfc" not in kinds or sample.case_type == "chain"
        if sample.case_type == "chain":
            continue
        if "cc" not in kinds:
            continue
        messages, _, _ = run("fc_zh_hard", sample.row)
        turns = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
        runs = [len(r) for r in kinds.replace("f", " ").replace("t", " ").split() if r]
        assert [len(m["tool_calls"]) for m in turns] == runs
        seen += 1
    assert seen >= 10  # the generator makes parallel calls often enough to check this


def test_openhermes_system_turn_or_system_prompt_field():
    messages, tools, _ = run("openhermes", OPENHERMES)
    assert messages == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 7 * 28?"},
                        {"role": "assistant", "content": "7 * 28 = 196."}] and tools == []
    row = json.loads(json.dumps(OPENHERMES))
    row["conversations"][0]["value"] = "Be a tutor."
    assert run("openhermes", row)[0][0]["content"] == "Be a tutor."
    row["conversations"].append({"from": "human", "value": "and 8 * 28?"})
    assert rule_of("openhermes", row) == "role_order"


def test_wildchat_conversation_and_toxic_flag():
    messages, _, _ = run("wildchat", WILDCHAT)
    assert messages == [{"role": "user", "content": "Hi, name a prime."}, {"role": "assistant", "content": "7 is prime."}]
    assert rule_of("wildchat", dict(WILDCHAT, toxic=True)) == "toxic"
    broken = json.loads(json.dumps(WILDCHAT))
    broken["conversation"][1]["content"] = None
    assert rule_of("wildchat", broken) == "empty_turn"


# ---------------------------------------------------------------------------------------------
# Shared pieces


def test_sanitize_name_and_dots():
    assert sanitize_name("Get Manager Placeholder Image") == "Get_Manager_Placeholder_Image"
    assert sanitize_name("/quotes/postcode/oca/GetQuote") == "quotes_postcode_oca_GetQuote"
    assert sanitize_name("get-best-picture-winners") == "get-best-picture-winners"
    assert sanitize_name("VRAnimator.animateScene") == "VRAnimator_animateScene"
    assert sanitize_name("VRAnimator.animateScene", keep_dots=True) == "VRAnimator.animateScene"
    assert len(sanitize_name("x" * 100)) == 64
    for bad in ("", "  ", "获取", None):
        with pytest.raises(Drop):
            sanitize_name(bad)


def test_fix_schema_maps_type_names_recursively():
    fixed = fix_schema({"type": "dict", "properties": {"a": {"type": "tuple", "items": {"type": "bool"}},
                        "b": {"type": ["int", "None"]}, "c": {"type": "any"}, "type": {"type": "str"}}, "required": None})
    assert fixed == {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "boolean"}},
                     "b": {"type": ["integer", "null"]}, "c": {}, "type": {"type": "string"}}}
    with pytest.raises(Drop):
        fix_schema({"type": "dict", "properties": {"a": {"type": "widget"}}})


def test_cached_and_plain_parsers_give_identical_rows():
    rows = [hermes_row(HERMES_CALL, HERMES_RESULT), toolace_row('[Get Stock Quote(symbol="AAPL")]')]
    kinds = ["hermes_fc", "toolace"]
    cached = cached_parsers()
    for kind, row in zip(kinds * 2, rows * 2, strict=True):
        assert run(kind, row, cached) == run(kind, row, Parsers())


# Values where orjson and the json module differ: float spelling, NaN, integers beyond 64 bits,
# non-string keys, lone surrogates; plus strings that merely look like the guarded spellings.
EDGE_VALUES = [0.1, 2.5e-3, 1e-05, 2.7479880225860053e-07, -0.0, 12345.678, 2**63, -2**63, 2**64 + 1, -(10**30),
               float("nan"), float("-inf"), "\ud800", {1: "a"}, {"b": 1, "a": [True, None]}, "e-mail null 0.00001",
               "é ✓ 😀 \u2028 \x00\x1f\x7f \"q\" \\", [1.0, 100, -7], {"x": {"y": [1e-7, "z"]}}]


def test_fast_json_codec_writes_and_reads_what_the_json_module_does():
    for value in EDGE_VALUES:
        assert FAST_JSON.dumps(value) == STDLIB_JSON.dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        assert FAST_JSON.dumps_sorted(value) == STDLIB_JSON.dumps_sorted(value)
    assert FAST_JSON.dumps_text([{"role": "user", "content": "\ud800 é"}]) == STDLIB_JSON.dumps_text(
        [{"role": "user", "content": "\ud800 é"}])
    # Floats of 1e16 and more may be 64-bit overflow that orjson read as a float: the row is redone.
    for big in (1e16, -1.5e300, [{"n": 123456789012345678901.0}]):
        with pytest.raises(NeedsStdlibJson):
            FAST_JSON.dumps(big)
    for text in ('{"a": [1, 2.5, "x", null, true]}', "NaN", '[-Infinity]', '"\\ud800"', "1e999", "{'a': 1}", "[1,]", "",
                 '{"a": 1, "a": 2}', "[" * 2000 + "]" * 2000):
        outcomes = []
        for codec in (FAST_JSON, STDLIB_JSON):
            try:
                outcomes.append(repr(codec.loads(text)))
            except (ValueError, RecursionError) as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[0] == outcomes[1], text[:40]
    for text in ("NaN", "[Infinity]"):
        with pytest.raises(ValueError):
            FAST_JSON.loads_no_constants(text)
    assert parse_loose("{'a': 'True story', 'b': True, 'c': None, 'd': [False]}", FAST_JSON) == {
        "a": "True story", "b": True, "c": None, "d": [False]}


def test_rows_with_edge_numbers_give_the_same_bytes_from_both_codecs():
    """The fast path (orjson) writes exactly what the row-by-row path (json) writes, edge values included."""
    args = '{"city": "北京", "n": 123456789012345678901, "small": 1e-7, "ratio": 0.5, "neg": -9223372036854775809}'
    rows = [
        ("fc_zh_hard", json.dumps(zh_row({"name": "get_weather", "arguments": args}), ensure_ascii=False)),
        ("fc_zh_hard", json.dumps(zh_row({"name": "get_weather", "arguments": '{"city": "e-mail", "x": NaN}'}),
                                  ensure_ascii=False)),
        ("fc_zh_hard", json.dumps(zh_row({"name": "get_weather", "arguments": '{"city": "\\ud83d"}'}))),
        ("hermes_fc", json.dumps(hermes_row(HERMES_CALL.replace("'guests': 4", "'guests': 40000000000000000000"),
                                            HERMES_RESULT), ensure_ascii=False)),
        ("hermes_fc", json.dumps(hermes_row(HERMES_CALL, HERMES_RESULT), ensure_ascii=False)),
        ("toolace", json.dumps(toolace_row('[Get Stock Quote(symbol="AAPL", days=1e20, ratio=1e-9)]'), ensure_ascii=False)),
    ]

    def outcome(kind: str, line: str, parsers: Parsers):
        try:
            return prepare_row(kind, line, parsers)
        except Exception as exc:  # noqa: BLE001 - the stage counts any of these as a dropped row
            return type(exc).__name__, getattr(exc, "rule", None)

    cached = cached_parsers()
    for kind, line in rows * 2:
        assert outcome(kind, line, cached) == outcome(kind, line, Parsers())
    assert "123456789012345678901" in prepare_row(*rows[0], cached).calls[0][1]
    assert outcome(*rows[2], cached) == ("UnicodeEncodeError", None)  # a lone surrogate: unparseable in the stage


def test_call_ids_are_deterministic_and_content_derived():
    a = run("hermes_fc", hermes_row(HERMES_CALL, HERMES_RESULT))
    row = hermes_row(HERMES_CALL, HERMES_RESULT)
    row["id"] = "another-uuid"  # same conversation from a different raw row: same output
    assert run("hermes_fc", row) == a
    other = run("hermes_fc", hermes_row(HERMES_CALL.replace("4", "5"), HERMES_RESULT))
    assert other[0][2]["tool_calls"][0]["id"] != a[0][2]["tool_calls"][0]["id"]


def test_data_modules_do_not_import_torch():
    import subprocess

    code = ("import sys, stages.kinds, stages.parsing.parsers, stages.row_pipeline, stages.schema_validator, "
            "stages.filter_rules, stages.filter, stages.filter_store, stages.reanswer; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _scan_reference(text: str, start: int) -> int:
    """The plain character walk that _scan_to_close must agree with."""
    depth, i, n = 0, start, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced call")


def test_call_list_scanning_shortcuts_agree_with_the_plain_readings():
    import random
    import re

    from stages.parsing.call_list import _quote_keywords, _scan_to_close

    keyword = re.compile(r"(^\s*|,\s*)([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
    rng = random.Random(3)
    alphabet = ["a", "b_1", "x", "=", "==", ",", ", ", " ", "\n", "(", ")", "[", "]", "{", "}", '"', "'", "\\",
                "1", "2.5", "é"]
    for _ in range(20000):
        text = "(" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        try:
            want: object = _scan_reference(text, 0)
        except ValueError:
            want = ValueError
        try:
            got: object = _scan_to_close(text, 0)
        except ValueError:
            got = ValueError
        assert got == want, text
        args = text[1:]
        assert _quote_keywords(args) == keyword.subn(lambda m: f'{m.group(1)}"{m.group(2)}": ', args), args
