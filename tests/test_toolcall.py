"""The tool-call format package: template rendering and masks, output parsing, strict arguments, and the
render -> parse round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolcall import source_files
from toolcall.arguments import ArgumentsError, canonical_arguments, json_object_end, load_object
from toolcall.chat_template import CHAT_TEMPLATE, render_assistant, render_chat
from toolcall.messages import ContentError, assistant_calls, canonicalize_messages, text_of
from toolcall.parser import ParsedOutput, parse_text_turn, parse_turn
from toolcall.shapes import OCTUPUS_SHAPE
from toolcall.tokens import (
    ASSISTANT,
    CONTENT,
    EMBEDDING_INIT_WORDS,
    FUNCTION_CALL,
    FUNCTION_OUTPUT,
    PARAMETERS,
    SPECIAL_TOKENS,
    reserved_marker_in,
)

REPO = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
GET_TOOL = {"type": "function", "function": {"name": "get", "description": "Fetch a URL", "parameters": {
    "type": "object", "properties": {"url": {"type": "string"}}}}}


def call(call_id: str, name: str, arguments: str | dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# Rows in the normalized schema of docs/design.md (messages/tools as JSON strings).
FIXTURE_ROWS = [
    {
        "messages": json.dumps([
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Weather in Paris and in 東京?"},
            {"role": "assistant", "content": None, "tool_calls": [
                call("c1", "get_weather", '{"city": "Paris"}'),
                call("c2", "get_weather", '{"city": "東京"}'),
            ]},
            {"role": "tool", "tool_call_id": "c2", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 18}"},
            {"role": "assistant", "content": "Paris 18°C, Tokyo 21°C."},
        ], ensure_ascii=False),
        "tools": json.dumps([WEATHER_TOOL, GET_TOOL], ensure_ascii=False),
        "source": "fixture",
    },
    {
        "messages": json.dumps([
            {"role": "user", "content": "Fetch example.com then say done"},
            {"role": "assistant", "content": "", "tool_calls": [
                call("a", "get", '{"url": "https://example.com", "opts": {"retries": [1, 2.5, null], "ok": true}}'),
            ]},
            {"role": "tool", "tool_call_id": "a", "content": "<html>…</html>"},
            {"role": "assistant", "content": "done\n\n```json\n{\"a\": 1}\n```"},
        ], ensure_ascii=False),
        "tools": json.dumps([GET_TOOL]),
        "source": "fixture",
    },
    {
        "messages": json.dumps([
            {"role": "system", "content": "Chat only."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Nothing."},
            {"role": "assistant", "content": None},
        ]),
        "tools": "[]",
        "source": "fixture",
    },
    {
        "messages": json.dumps([
            {"role": "user", "content": "no args please"},
            {"role": "assistant", "content": None, "tool_calls": [call("z", "get", "{}")]},
        ]),
        "tools": json.dumps([GET_TOOL]),
        "source": "fixture",
    },
]


def filtered_rows(limit_per_file: int | None) -> list[dict]:
    """Rows of data/filtered when the pipeline has produced them (the first ``limit_per_file`` of
    each file), else the fixture rows."""
    files = sorted((REPO / "data" / "filtered").glob("*/*.jsonl"))
    rows: list[dict] = []
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if limit_per_file is not None and i >= limit_per_file:
                    break
                if line.strip():
                    rows.append(json.loads(line))
    return rows or FIXTURE_ROWS


def assistant_spans(rendered: str, eos: str) -> list[str]:
    """Each assistant turn of a rendered conversation: from after <|ASSISTANT|> through eos."""
    spans = []
    for piece in rendered.split(ASSISTANT)[1:]:
        end = piece.find(eos)
        spans.append(piece if end < 0 else piece[: end + len(eos)])
    return spans


def expected_of(message: dict) -> tuple[str | None, list[tuple[str, str]]]:
    calls = assistant_calls(message)
    if calls:
        return None, [(name, canonical_arguments(args)) for name, args in calls]
    return text_of(message.get("content")), []


def parse_span(span: str) -> ParsedOutput:
    """A rendered assistant span read the way the server reads generated text: generation ended on
    the end-of-turn token, which the backend removes."""
    assert span.endswith(EOS), span[-40:]
    return parse_turn(OCTUPUS_SHAPE, span[: -len(EOS)], finished=True)


# ------------------------------------------------------------------ module surface


def test_import_does_not_pull_torch() -> None:
    modules = ", ".join(f"toolcall.{p.stem}" for p in source_files() if p.suffix == ".py" and p.stem != "__init__")
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_exports_are_consistent() -> None:
    assert len(set(SPECIAL_TOKENS)) == 7
    assert set(EMBEDDING_INIT_WORDS) == set(SPECIAL_TOKENS)
    assert CHAT_TEMPLATE == (REPO / "toolcall" / "chat_template.jinja").read_text(encoding="utf-8")
    assert REPO / "toolcall" / "chat_template.jinja" in source_files()
    assert "{% generation %}" in CHAT_TEMPLATE.replace("{%- generation -%}", "{% generation %}")
    shape = OCTUPUS_SHAPE
    assert (shape.text_open, shape.call_open, shape.name_close, shape.call_close, shape.call_separator) == (
        CONTENT, FUNCTION_CALL, PARAMETERS, "", "")
    assert shape.special_tokens <= set(SPECIAL_TOKENS)
    assert shape.render_calls([("a", "{}"), ("b", '{"x":1}')]) == f"{FUNCTION_CALL}a{PARAMETERS}{{}}{FUNCTION_CALL}b{PARAMETERS}{{\"x\":1}}"


# ------------------------------------------------------------------ parser (octupus; tests/test_serve_formats.py: both shapes)


def test_parse_text_answer() -> None:
    out = parse_turn(OCTUPUS_SHAPE, f"{CONTENT}Paris is the capital.", finished=True)
    assert (out.content, out.calls) == ("Paris is the capital.", [])
    assert parse_turn(OCTUPUS_SHAPE, f"{CONTENT}cut here", finished=False).content == "cut here"
    # An unconstrained, untrained model writes no decision token: its text is content.
    plain = parse_turn(OCTUPUS_SHAPE, "I would call get_weather(city='Paris')", finished=True)
    assert (plain.content, plain.calls) == ("I would call get_weather(city='Paris')", [])
    assert parse_turn(OCTUPUS_SHAPE, "", finished=True).content == ""  # an immediate eos


def test_parse_holds_back_an_undecided_start() -> None:
    for start in ("", "<|FUNCTION_C", "<|CONT"):
        out = parse_turn(OCTUPUS_SHAPE, start, finished=False)
        assert (out.content, out.calls) == (None, [])
    assert parse_turn(OCTUPUS_SHAPE, "<|FUNCTION_C", finished=True).content == "<|FUNCTION_C"


def test_parse_parallel_calls_and_prefix_names() -> None:
    text = (f'{FUNCTION_CALL}get{PARAMETERS}{{"url": "u"}}{FUNCTION_CALL}get_weather{PARAMETERS}'
            f'{{"city":"Paris", "n": [1, 2]}}')
    out = parse_turn(OCTUPUS_SHAPE, text, finished=True)
    assert out.content is None
    assert [(c.name, c.arguments, c.complete) for c in out.calls] == [
        ("get", '{"url": "u"}', True), ("get_weather", '{"city":"Paris", "n": [1, 2]}', True)]
    assert [canonical_arguments(c.arguments) for c in out.calls] == ['{"url":"u"}', '{"city":"Paris","n":[1,2]}']


def test_parse_cut_calls_are_incomplete() -> None:
    cut_args = parse_turn(OCTUPUS_SHAPE, f'{FUNCTION_CALL}get_weather{PARAMETERS}{{"city": "Par', finished=False)
    assert [(c.name, c.arguments, c.complete) for c in cut_args.calls] == [("get_weather", '{"city": "Par', False)]
    assert cut_args.complete_calls == []
    for finished in (False, True):
        cut_name = parse_turn(OCTUPUS_SHAPE, f"{FUNCTION_CALL}get{PARAMETERS}{{}}{FUNCTION_CALL}get_wea", finished)
        assert [(c.name, c.arguments) for c in cut_name.complete_calls] == [("get", "{}")]
        assert cut_name.calls[-1].name is None and not cut_name.calls[-1].complete


def test_a_call_is_complete_when_its_arguments_close() -> None:
    """A max_tokens cut right after the arguments' closing brace leaves a complete call: the next
    call's marker or the end of the turn adds nothing to it."""
    out = parse_turn(OCTUPUS_SHAPE, f'{FUNCTION_CALL}get{PARAMETERS}{{"a": {{"b": "}}"}}, "c": [1]}}', finished=False)
    assert [(c.name, c.arguments, c.complete) for c in out.calls] == [("get", '{"a": {"b": "}"}, "c": [1]}', True)]
    # A marker spelled inside a string value is text, not the next call.
    quoted = f'{{"q": "{FUNCTION_CALL}x{PARAMETERS}{{"}}'
    out = parse_turn(OCTUPUS_SHAPE, f"{FUNCTION_CALL}get{PARAMETERS}{quoted}", finished=False)
    assert [(c.arguments, c.complete) for c in out.calls] == [(quoted, True)]
    # Whatever no grammar allows after closed arguments stays in them, for validation to refuse.
    junk = parse_turn(OCTUPUS_SHAPE, f'{FUNCTION_CALL}get{PARAMETERS}{{"x": 1}} tail', finished=True)
    assert [(c.arguments, c.complete) for c in junk.calls] == [('{"x": 1} tail', True)]


@pytest.mark.parametrize(("text", "end"), [
    ('{"a": 1}', 8), (' {"a": "}"} x', 11), (r'{"a": "\\"}', 11), (r'{"a": "\""}', 11), ('{"a": [{}]}', 11),
    ('{"a": 1', None), ('{"a": "}', None), (r'{"a": "\"}', None), ("[1]", None), ("", None),
])
def test_json_object_end(text: str, end: int | None) -> None:
    assert json_object_end(text) == end


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        ('{"city": "Par', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"x": NaN}', "not valid JSON"),
        ('{"x": 1} {"y": 2}', "not valid JSON"),
        ('{"x": __import__("os").getcwd()}', "not valid JSON"),  # parsed, never evaluated
    ],
)
def test_call_arguments_must_be_one_strict_json_object(arguments: str, why: str) -> None:
    out = parse_turn(OCTUPUS_SHAPE, f"{FUNCTION_CALL}get{PARAMETERS}{arguments}", finished=True)
    assert [(c.name, c.arguments, c.complete) for c in out.calls] == [("get", arguments, True)]
    with pytest.raises(ArgumentsError, match=why):
        load_object(out.calls[0].arguments)


def test_text_only_turn_is_all_content_after_its_marker() -> None:
    assert parse_text_turn(OCTUPUS_SHAPE, f"{CONTENT}a {FUNCTION_CALL}b", finished=True).content == f"a {FUNCTION_CALL}b"
    assert parse_text_turn(OCTUPUS_SHAPE, "<|CONT", finished=False).content == ""
    assert parse_text_turn(OCTUPUS_SHAPE, "<|CONT", finished=True).content == "<|CONT"


def test_reserved_markers_are_found_in_data_text() -> None:
    assert reserved_marker_in("say <|CONTENT|> now") == CONTENT
    assert reserved_marker_in("ends<|im_end|>") == "<|im_end|>"
    assert reserved_marker_in("plain <|other|> text") is None


def test_text_of_takes_text_parts_of_either_api_only() -> None:
    assert text_of(None) == "" and text_of("a") == "a"
    assert text_of([{"type": "text", "text": "a"}, {"type": "input_text", "text": "b"},
                    {"type": "output_text", "text": "c"}]) == "abc"
    with pytest.raises(ContentError, match="'image_url' is not supported"):
        text_of([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}])


# ------------------------------------------------------------------ template


def test_template_layout_v2_links_results_by_id() -> None:
    messages = json.loads(FIXTURE_ROWS[0]["messages"])
    text = render_chat(messages, json.loads(FIXTURE_ROWS[0]["tools"]), eos_token=EOS, add_generation_prompt=True)
    tools_block = "get_weather: Current weather of a city\n- city: string\nget: Fetch a URL\n- url?: string"
    assert text.startswith(f"<|SYSTEM|>You are helpful.\n# Tools\n{tools_block}{EOS}<|USER|>Weather in Paris and in 東京?{EOS}")
    assert (f'{ASSISTANT}{FUNCTION_CALL}get_weather{PARAMETERS}{{"city": "Paris"}}'
            f'{FUNCTION_CALL}get_weather{PARAMETERS}{{"city": "東京"}}{EOS}') in text
    # Results arrive in the other order; each is labelled with the call it answers (by tool_call_id).
    assert f'{FUNCTION_OUTPUT}get_weather\n{{"temp": 21}}{EOS}{FUNCTION_OUTPUT}get_weather\n{{"temp": 18}}{EOS}' in text
    assert text.endswith(f"{ASSISTANT}{CONTENT}Paris 18°C, Tokyo 21°C.{EOS}{ASSISTANT}")


def test_template_links_names_by_id_not_position() -> None:
    messages = [
        {"role": "user", "content": "both"},
        {"role": "assistant", "tool_calls": [call("x1", "get", "{}"), call("x2", "get_weather", "{}")]},
        {"role": "tool", "tool_call_id": "x2", "content": "W"},
        {"role": "tool", "tool_call_id": "x1", "content": "G"},
    ]
    v2 = render_chat(messages, [GET_TOOL, WEATHER_TOOL], eos_token=EOS)
    assert v2.endswith(f"{FUNCTION_OUTPUT}get_weather\nW{EOS}{FUNCTION_OUTPUT}get\nG{EOS}")
    v1 = render_chat(messages, [GET_TOOL, WEATHER_TOOL], eos_token=EOS, tool_format="v1")
    assert v1.endswith(f"{FUNCTION_OUTPUT}get_weather\nW\nget\nG{EOS}")
    assert v1.count(FUNCTION_OUTPUT) == 1 and v2.count(FUNCTION_OUTPUT) == 2


def test_template_accepts_legacy_function_messages() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "function_call": {"name": "get", "arguments": '{"url":"a"}'}},
        {"role": "function", "name": "get", "content": "page"},
    ]
    text = render_chat(messages, [GET_TOOL["function"]], eos_token=EOS, tool_format="v1", add_generation_prompt=True)
    assert f'{ASSISTANT}{FUNCTION_CALL}get{PARAMETERS}{{"url":"a"}}{EOS}{FUNCTION_OUTPUT}get\npage{EOS}{ASSISTANT}' in text
    assert json.dumps(GET_TOOL["function"]) in text


def test_template_dict_and_string_arguments_render_the_same_bytes() -> None:
    as_dict = [{"role": "assistant", "tool_calls": [call("1", "f", {"b": [1, "é"], "a": None})]}]
    as_str = canonicalize_messages([{"role": "assistant", "tool_calls": [call("1", "f", '{"b": [1, "é"], "a": null}')]}])
    assert render_chat(as_dict, eos_token=EOS) == render_chat(as_str, eos_token=EOS)
    assert render_chat(as_dict, eos_token=EOS) == ASSISTANT + render_assistant(as_dict[0], EOS)


def test_template_without_system_or_tools_and_bad_inputs() -> None:
    assert render_chat([{"role": "user", "content": "x"}], eos_token=EOS) == f"<|USER|>x{EOS}"
    assert render_chat([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                       [GET_TOOL], eos_token=EOS).startswith("<|SYSTEM|># Tools\n")
    with pytest.raises(Exception, match="tool_format"):
        render_chat([{"role": "user", "content": "x"}], eos_token=EOS, tool_format="v3")
    with pytest.raises(Exception, match="unsupported message role"):
        render_chat([{"role": "narrator", "content": "x"}], eos_token=EOS)
    assert render_chat([{"role": "developer", "content": "d"}], eos_token=EOS) == f"<|SYSTEM|>d{EOS}"


def test_canonicalize_rejects_non_object_arguments() -> None:
    with pytest.raises(ArgumentsError):
        canonicalize_messages([{"role": "assistant", "tool_calls": [call("1", "f", "[1]")]}])
    with pytest.raises(ArgumentsError):
        canonicalize_messages([{"role": "assistant", "tool_calls": [call("1", "f", "{not json")]}])


def test_assistant_mask_covers_exactly_the_generation_spans(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    ids_of = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    for token in SPECIAL_TOKENS:
        assert tok.encode(token, add_special_tokens=False) == [ids_of[token]]
    for tool_format in ("v1", "v2"):
        row = FIXTURE_ROWS[0]
        messages = canonicalize_messages(json.loads(row["messages"]))
        enc = tok.apply_chat_template(messages, tools=json.loads(row["tools"]), tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True, tool_format=tool_format)
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        assert len(ids) == len(mask)
        # Contiguous masked runs = the assistant turns, each exactly decision token ... eos.
        runs, start = [], None
        for i, m in enumerate([*mask, 0]):
            if m and start is None:
                start = i
            elif not m and start is not None:
                runs.append((start, i))
                start = None
        turns = [m for m in messages if m["role"] == "assistant"]
        assert len(runs) == len(turns)
        for (a, b), message in zip(runs, turns, strict=True):
            assert ids[a - 1] == ids_of[ASSISTANT]  # the prompt's role marker is not learned
            assert ids[a] in (ids_of[CONTENT], ids_of[FUNCTION_CALL])  # the decision is learned
            assert ids[b - 1] == tok.eos_token_id  # so is the end of turn
            assert tok.decode(ids[a:b]) == render_assistant(message, tok.eos_token)


def check_round_trip(rows: list[dict]) -> None:
    """Every assistant turn renders (template) and parses back to the same content or calls, argument
    bytes included: for a turn the model learned, the server returns exactly the canonical calls."""
    checked_turns = 0
    for n, row in enumerate(rows):
        messages = canonicalize_messages(json.loads(row["messages"]))
        tools = json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]
        turns = [m for m in messages if m["role"] == "assistant"]
        for tool_format in ("v2", "v1"):
            rendered = render_chat(messages, tools, eos_token=EOS, tool_format=tool_format)
            spans = assistant_spans(rendered, EOS)
            assert len(spans) == len(turns), f"row {n} ({row.get('source')})"
            for span, message in zip(spans, turns, strict=True):
                assert span == render_assistant(message, EOS), f"row {n} ({row.get('source')})"
                parsed = parse_span(span)
                content, calls = expected_of(message)
                assert all(c.complete for c in parsed.calls), f"row {n} ({row.get('source')})"
                assert parsed.content == content, f"row {n} ({row.get('source')})"
                assert [(c.name, c.arguments) for c in parsed.calls] == calls, f"row {n}"
                checked_turns += 1
    assert checked_turns >= len(rows)


def test_round_trip_filtered_rows(tiny_tokenizer) -> None:
    rows = filtered_rows(limit_per_file=500)
    check_round_trip(rows)
    # The tokenizer path gives the same text as the tokenizer-free renderer.
    for row in (rows[0], FIXTURE_ROWS[0]):
        messages = canonicalize_messages(json.loads(row["messages"]))
        tools = json.loads(row["tools"])
        assert tiny_tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False) == render_chat(
            messages, tools, eos_token=EOS)


@pytest.mark.slow
def test_round_trip_every_filtered_row() -> None:
    check_round_trip(filtered_rows(limit_per_file=None))
