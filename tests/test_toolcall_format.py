"""The tool-call format: template rendering and masks, output parsing, and the render -> parse round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages import toolcall_format as tf
from stages.toolcall_format import (
    ASSISTANT,
    CONTENT,
    FUNCTION_CALL,
    FUNCTION_OUTPUT,
    PARAMETERS,
    SPECIAL_TOKENS,
    canonicalize_messages,
    parse_output,
    render_assistant,
    render_chat,
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
    calls = tf.assistant_calls(message)
    if calls:
        return None, [(name, tf.canonical_arguments(args)) for name, args in calls]
    return tf._text_of(message.get("content")), []


# ------------------------------------------------------------------ module surface


def test_import_does_not_pull_torch() -> None:
    code = "import sys, stages.toolcall_format; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_exports_are_consistent() -> None:
    assert len(set(SPECIAL_TOKENS)) == 7
    assert set(tf.EMBEDDING_INIT_WORDS) == set(SPECIAL_TOKENS)
    assert tf.CHAT_TEMPLATE == (REPO / "stages" / "chat_template.jinja").read_text(encoding="utf-8")
    assert "{% generation %}" in tf.CHAT_TEMPLATE.replace("{%- generation -%}", "{% generation %}")
    shape = tf.OCTUPUS_SHAPE
    assert (shape.text_open, shape.call_open, shape.name_close, shape.call_close, shape.call_separator) == (
        CONTENT, FUNCTION_CALL, PARAMETERS, "", "")
    assert shape.special_tokens <= set(SPECIAL_TOKENS)
    assert shape.render_calls([("a", "{}"), ("b", '{"x":1}')]) == f"{FUNCTION_CALL}a{PARAMETERS}{{}}{FUNCTION_CALL}b{PARAMETERS}{{\"x\":1}}"


# ------------------------------------------------------------------ parse_output


def test_parse_text_answer_with_and_without_eos() -> None:
    out = parse_output(f"{CONTENT}Paris is the capital.{EOS}")
    assert (out.content, out.tool_calls, out.complete, out.ended) == ("Paris is the capital.", [], True, True)
    out = parse_output(f"{CONTENT}cut here")
    assert (out.content, out.complete, out.ended) == ("cut here", True, False)


def test_parse_parallel_calls_and_prefix_names() -> None:
    text = (f'{FUNCTION_CALL}get{PARAMETERS}{{"url": "u"}}{FUNCTION_CALL}get_weather{PARAMETERS}'
            f'{{"city":"Paris", "n": [1, 2]}}<|im_end|>trailing garbage')
    out = parse_output(text, eos_token="<|im_end|>")
    assert out.complete and out.ended and out.content is None
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("get", '{"url":"u"}'), ("get_weather", '{"city":"Paris","n":[1,2]}')]
    assert out.tool_calls[0].to_openai("id1") == {
        "id": "id1", "type": "function", "function": {"name": "get", "arguments": '{"url":"u"}'}}


@pytest.mark.parametrize(
    ("text", "n_calls", "why"),
    [
        (f'{FUNCTION_CALL}get_weather{PARAMETERS}{{"city": "Par', 0, "not valid JSON"),
        (f'{FUNCTION_CALL}get{PARAMETERS}{{}}{FUNCTION_CALL}get_wea', 1, "cut before its arguments"),
        (f"{FUNCTION_CALL}get{PARAMETERS}[1, 2]{EOS}", 0, "must be a JSON object"),
        (f'{FUNCTION_CALL}get{PARAMETERS}{{"x": NaN}}{EOS}', 0, "not valid JSON"),
        (f'{FUNCTION_CALL}get{PARAMETERS}{{"x": 1}} {{"y": 2}}{EOS}', 0, "not valid JSON"),
        (f'{FUNCTION_CALL}{PARAMETERS}{{}}{EOS}', 0, "without a name"),
        ("<|FUNCTION_C", 0, "decision token"),
    ],
)
def test_parse_incomplete_or_invalid_calls(text: str, n_calls: int, why: str) -> None:
    out = parse_output(text)
    assert not out.complete
    assert len(out.tool_calls) == n_calls
    assert why in (out.error or "")


def test_parse_stops_at_role_marker_and_handles_undecided_text() -> None:
    out = parse_output(f"{CONTENT}hi{tf.USER}more")
    assert (out.content, out.ended) == ("hi", True)
    plain = parse_output("I would call get_weather(city='Paris')")  # an unconstrained, untrained model
    assert plain.content == "I would call get_weather(city='Paris')" and plain.tool_calls == []
    empty = parse_output("")
    assert empty.content is None and not empty.complete
    assert parse_output(EOS).complete  # an immediate eos is a (degenerate) finished turn


def test_reserved_markers_are_found_in_data_text() -> None:
    assert tf.reserved_marker_in("say <|CONTENT|> now") == CONTENT
    assert tf.reserved_marker_in("ends<|im_end|>") == "<|im_end|>"
    assert tf.reserved_marker_in("plain <|other|> text") is None


def test_parse_never_evaluates() -> None:
    out = parse_output(f'{FUNCTION_CALL}f{PARAMETERS}{{"x": __import__("os").getcwd()}}{EOS}')
    assert not out.complete and out.tool_calls == []


# ------------------------------------------------------------------ template


def test_template_layout_v2_links_results_by_id() -> None:
    messages = json.loads(FIXTURE_ROWS[0]["messages"])
    text = render_chat(messages, json.loads(FIXTURE_ROWS[0]["tools"]), eos_token=EOS, add_generation_prompt=True)
    tools_block = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in (WEATHER_TOOL, GET_TOOL))
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
    with pytest.raises(tf.ArgumentsError):
        canonicalize_messages([{"role": "assistant", "tool_calls": [call("1", "f", "[1]")]}])
    with pytest.raises(tf.ArgumentsError):
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
    """Every assistant turn renders (template) and parses back to the same calls/content."""
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
                parsed = parse_output(span)
                content, calls = expected_of(message)
                assert parsed.complete and parsed.ended, f"row {n} ({row.get('source')}): {parsed.error}"
                assert parsed.content == content, f"row {n} ({row.get('source')})"
                assert [(c.name, c.arguments) for c in parsed.tool_calls] == calls, f"row {n}"
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
