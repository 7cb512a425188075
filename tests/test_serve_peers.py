"""The side-by-side serving benchmark's own logic (bench/serve_peers.py), without starting a server:
the requests every peer gets, the template the peers render them with, the stream parsing, the
tool-call check, the summary, ratios and table, and the skipping of peers that are not installed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from bench import serve_peers as sp


def test_template_renders_what_our_hermes_format_renders(smollm2_tokenizer) -> None:
    """The peers' chat template gives the prompt `python -m serve --format hermes` gives SmolLM2."""
    from serve.formats import HermesFormat

    fmt = HermesFormat(smollm2_tokenizer)
    template = sp.TEMPLATE.read_text(encoding="utf-8")
    tools = sp.make_toolsets()[1]
    call = {"id": "c1", "type": "function", "function": {"name": tools[0]["function"]["name"], "arguments": '{"a": 1}'}}
    cases = [
        ([{"role": "user", "content": "hi"}], []),
        ([{"role": "user", "content": "hi"}], tools),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], tools),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], []),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call, call]},
          {"role": "tool", "tool_call_id": "c1", "content": "done"}, {"role": "user", "content": "thanks"}], tools),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "On it.", "tool_calls": [call]}], tools),
    ]
    for messages, tool_list in cases:
        ours = fmt.render(messages, tool_list)
        peers = smollm2_tokenizer.apply_chat_template(messages, tools=tool_list or None, chat_template=template,
                                                      add_generation_prompt=True, tokenize=False)
        assert peers == ours
    assert sp.hermes_tool_block(tools) in fmt.render([{"role": "user", "content": "hi"}], tools)


def test_toolsets_grow_to_their_targets_with_valid_schemas() -> None:
    sets = sp.make_toolsets()
    assert len(sets) == len(sp.TOOLSET_TARGETS)
    sizes = [sp.approx_tokens(sp.hermes_tool_block(t)) for t in sets]
    assert sizes == sorted(sizes)
    for tools, target, size in zip(sets, sp.TOOLSET_TARGETS, sizes, strict=True):
        assert size <= target - sp.CHAT_OVERHEAD_TOKENS or len(tools) == 1
        names = [t["function"]["name"] for t in tools]
        assert len(set(names)) == len(names)
        for tool in tools:
            jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
    assert len(sets[-1]) > len(sets[0])
    assert sp.make_toolsets() == sets  # seeded


def test_requests_mix_tools_and_lengths_evenly() -> None:
    sets = sp.make_toolsets()
    reqs = sp.make_requests(32, sets)
    with_tools = [r for r in reqs if r.toolset is not None]
    assert len(with_tools) == 16
    for n in sp.MAX_TOKENS_CYCLE:
        assert sum(r.max_tokens == n and r.toolset is None for r in reqs) == 4
        for choice in ("auto", "required"):
            assert sum(r.max_tokens == n and r.tool_choice == choice for r in with_tools) == 2
    assert {r.toolset for r in with_tools} == set(range(len(sets)))
    body = with_tools[0].body(sets)
    assert body["tools"] == sets[with_tools[0].toolset] and body["tool_choice"] == "auto"
    assert with_tools[1].body(sets)["tool_choice"] == "required"
    assert body["stream"] and body["stream_options"] == {"include_usage": True} and body["temperature"] == 0
    assert "tools" not in reqs[0].body(sets)
    assert sp.make_requests(32, sets) == reqs


def test_rounds_and_rotation() -> None:
    assert sp.split_rounds(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert sp.split_rounds([1, 2], 5) == [[1], [2]]
    assert [sp.rotated(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


TOOLS = [{"type": "function", "function": {"name": "search_order", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "maximum": 100}},
    "required": ["query"]}}}]


def test_check_calls_counts_each_kind_of_invalid_call() -> None:
    calls = [{"name": "search_order", "arguments": '{"query": "late", "limit": 5}'},
             {"name": "search_order", "arguments": '{"limit": 500}'},
             {"name": "search_order", "arguments": '{"query": "x"'},
             {"name": "search_order", "arguments": '["query"]'},
             {"name": "delete_everything", "arguments": "{}"}]
    assert sp.check_calls(calls, TOOLS) == {"calls": 5, "valid": 1, "unknown_name": 1, "bad_json": 2,
                                            "schema_violation": 1}


def _sse(chunks: list[dict]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_stream_request_reads_ttft_usage_and_streamed_calls() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c", "type": "function", "function": {"name": "search_order", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"query": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"late"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 321, "completion_tokens": 17, "total_tokens": 338}},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, content=_sse(chunks), headers={"content-type": "text/event-stream"})

    async def go() -> sp.Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://peer") as client:
            return await sp.stream_request(client, {"stream": True})

    out = asyncio.run(go())
    assert out.ok and out.usage_reported and out.completion_tokens == 17 and out.prompt_tokens == 321
    assert out.calls == [{"name": "search_order", "arguments": '{"query": "late"}'}]
    assert out.finish_reason == "tool_calls" and out.ttft is not None and out.ttft <= out.latency


def test_stream_request_without_usage_counts_deltas_and_reports_errors() -> None:
    chunks = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("Hel", "lo", "!")]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/completions") and request.headers.get("x-fail"):
            return httpx.Response(500, text="boom")
        return httpx.Response(200, content=_sse(chunks))

    async def go(headers: dict) -> sp.Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://peer",
                                     headers=headers) as client:
            return await sp.stream_request(client, {})

    out = asyncio.run(go({}))
    assert out.ok and not out.usage_reported and out.completion_tokens == 3 and out.content == "Hello!"
    bad = asyncio.run(go({"x-fail": "1"}))
    assert not bad.ok and bad.error.startswith("500")


def _outcome(latency: float, tokens: int, calls: list | None = None, content: str = "",
             finish: str = "stop") -> sp.Outcome:
    return sp.Outcome(ok=True, latency=latency, ttft=latency / 4, completion_tokens=tokens, prompt_tokens=400,
                      usage_reported=True, calls=calls or [], content=content, finish_reason=finish)


def test_summary_ratios_and_table() -> None:
    sets = [TOOLS]
    reqs = [sp.BenchRequest(0, [], 16), sp.BenchRequest(1, [], 16, 0), sp.BenchRequest(2, [], 16, 0)]
    good = [{"name": "search_order", "arguments": '{"query": "a"}'}]
    ours = sp.summarize([_outcome(1.0, 10), _outcome(2.0, 10, good), _outcome(1.0, 10, good)], 4.0, reqs, sets)
    peer_outs = [_outcome(0.5, 10), _outcome(1.0, 10, [{"name": "search_order", "arguments": "{}"}]),
                 _outcome(0.5, 10, content="<tool_call>\n{oops")]
    peer = sp.summarize(peer_outs, 2.0, reqs, sets)
    assert ours["generated_tok_per_s"] == 7.5 and ours["requests_per_s"] == 0.75
    assert ours["tool_calls"]["valid"] == 2 and ours["tool_calls"]["responses_with_calls"] == 2
    assert peer["tool_calls"]["schema_violation"] == 1 and peer["tool_calls"]["unparsed_call_text"] == 1
    assert ours["prompt_tokens_tools_mean"] == 400
    assert ours["per_request"][1] == [1, 0, "auto", 16, 400, 10, 0.5, 2.0, "stop", 1]
    cut = sp.summarize([_outcome(1.0, 16, good, finish="length")], 1.0,
                       [sp.BenchRequest(0, [], 16, 0, "required")], sets)["tool_calls"]
    assert cut["cut_by_max_tokens"] == 1 and cut["calls"] == 0 and cut["required_answered_with_text"] == 0
    required = [sp.BenchRequest(0, [], 16, 0, "required")]
    text = sp.summarize([_outcome(1.0, 16, content="Sure, here is how.")], 1.0, required, sets)["tool_calls"]
    assert text["required_answered_with_text"] == 1 and text["required_cut_before_a_call"] == 0
    held = sp.summarize([_outcome(1.0, 16, finish="length")], 1.0, required, sets)["tool_calls"]
    assert held["required_cut_before_a_call"] == 1 and held["required_answered_with_text"] == 0
    levels = {"ours": {"8": ours}, "llama.cpp": {"8": peer}}
    r = sp.ratios(levels)
    assert r["ours/llama.cpp"]["8"]["generated_tok_per_s"] == 0.5
    assert r["ours/llama.cpp"]["8"]["latency_p50_s"] == 2.0
    assert set(sp.ratios({**levels, "ours-b1": {"8": peer}})) == {"ours/llama.cpp", "ours-b1/llama.cpp"}
    result = {"machine": {"cpu_model": "Test CPU", "cpus": 2}, "threads": 2, "loadavg_before": [0.1, 0.2, 0.3],
              "loadavg_after": [1.0, 0.5, 0.4], "skipped": {"vllm": "skipped: .venv-vllm does not exist"},
              "levels": levels, "ratios_ours_over_peer": r}
    text = sp.table(result)
    assert "Test CPU" in text and "[0.1, 0.2, 0.3]" in text
    assert "vllm: skipped: .venv-vllm does not exist" in text
    assert "2/2" in text and "0/1" in text
    assert "ours/llama.cpp at 8 clients: gen tok/s 0.50x" in text


def test_missing_peers_are_skipped_with_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = sp.PeerConfig(model=str(tmp_path / "no-model"), llamacpp_venv="no-such-llamacpp",
                        vllm_venv="no-such-vllm")
    peers = sp.resolve_peers(["llama.cpp", "vllm"], cfg)
    assert [p.name for p in peers] == ["llama.cpp", "vllm"]
    assert "llama-server is not built" in peers[0].skip and "does not exist" in peers[1].skip
    assert "not installed" in sp.make_peer("llama-cpp-python", cfg).skip
    assert "not built" in sp.make_peer("ours-llamacpp", cfg).skip
    with pytest.raises(ValueError, match="unknown peer"):
        sp.make_peer("tgi", cfg)
    result = sp.side_by_side(["llama.cpp", "vllm"], cfg, [1], [2], rounds=1)
    printed = capsys.readouterr().out
    assert "llama.cpp: skipped:" in printed and "vllm: skipped:" in printed
    assert result["levels"] == {} and set(result["skipped"]) == {"llama.cpp", "vllm"}
    assert result["machine"]["cpu_model"] and len(result["loadavg_after"]) == 3


def test_ours_peer_command_is_our_server() -> None:
    peer = sp.make_peer("ours", sp.PeerConfig(model="models/base", threads=2, max_batch=8))
    assert not peer.skip and peer.command is not None
    cmd = peer.command(1234)
    assert cmd[1:3] == ["-m", "serve"] and "--port" in cmd and "1234" in cmd
    assert cmd[cmd.index("--max-batch") + 1] == "8" and cmd[cmd.index("--format") + 1] == "hermes"
    assert cmd[cmd.index("--threads") + 1] == "2"
