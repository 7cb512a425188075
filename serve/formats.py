"""Tool-call formats the server speaks: how a conversation becomes a prompt and how output parses.

Two formats share one description of the output's shape (``ToolCallShape`` from
``stages.toolcall_format``): the decision between text and calls, then calls as
``call_open name name_close arguments call_close`` joined by ``call_separator``.

- ``octupus``: the project's special-token format (trained models), rendered with the project's
  chat template; the shape is ``stages.toolcall_format.OCTUPUS_SHAPE``.
- ``hermes``: stock instruct models (ChatML, tools listed in the system prompt, calls written as
  ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``). When the model's own chat
  template cannot render tools (SmolLM2's cannot), tools and past calls are injected as text.

The same shape drives the grammar (``serve.constraints``) and the incremental parser below, so
what the grammar allows is exactly what the parser reads, for streamed and non-streamed output alike.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.toolcall_format import OCTUPUS_SHAPE, ToolCallShape

from serve.errors import BadRequest

log = logging.getLogger(__name__)

HERMES_SHAPE = ToolCallShape(
    text_open="",
    call_open='<tool_call>\n{"name": "',
    name_close='", "arguments": ',
    call_close="}\n</tool_call>",
    call_separator="\n",
    special_tokens=frozenset(),
)

# Used only when a ChatML tokenizer ships without a template.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# OpenAI allows [a-zA-Z0-9_-]{1,64}; dots are accepted too because BFCL's names may carry them.
# The name is written verbatim into the grammar and, for hermes, into a JSON string, so nothing
# outside this set may pass.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass
class ParsedCall:
    name: str | None  # None while the name is still being generated
    arguments: str  # arguments text seen so far (streaming holds back a possible terminator)
    complete: bool


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)

    @property
    def complete_calls(self) -> list[ParsedCall]:
        return [c for c in self.calls if c.complete and c.name is not None]


def held_prefix(text: str, terminator: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``terminator``."""
    for n in range(min(len(text), len(terminator) - 1), 0, -1):
        if terminator.startswith(text[-n:]):
            return n
    return 0


def parse_with_shape(shape: ToolCallShape, text: str, finished: bool) -> ParsedOutput:
    """Parse generated text (special tokens kept, end-of-turn token removed) against ``shape``.

    ``finished`` means generation ended on its own (end-of-turn token or grammar end); only then
    can a call without a closing marker count as complete. Before that, any suffix that could be
    the start of a marker is held back so that streamed deltas never have to be retracted.
    """
    open_ = shape.call_open
    if not text.startswith(open_):
        if not finished and open_.startswith(text):
            return ParsedOutput(content=None)  # undecided: could still become a call
        if shape.text_open:
            if text.startswith(shape.text_open):
                return ParsedOutput(content=text[len(shape.text_open):])
            if not finished and shape.text_open.startswith(text):
                return ParsedOutput(content=None)
        return ParsedOutput(content=text)

    calls: list[ParsedCall] = []
    next_call = shape.call_close + shape.call_separator + open_
    pos = 0
    while text.startswith(open_, pos):
        name_start = pos + len(open_)
        name_end = text.find(shape.name_close, name_start)
        if name_end < 0:
            calls.append(ParsedCall(name=None, arguments="", complete=False))
            break
        name = text[name_start:name_end]
        args_start = name_end + len(shape.name_close)
        if shape.call_close:
            close = text.find(shape.call_close, args_start)
            if close >= 0:
                calls.append(ParsedCall(name=name, arguments=text[args_start:close], complete=True))
                pos = close + len(shape.call_close)
                if text.startswith(shape.call_separator + open_, pos):
                    pos += len(shape.call_separator)
                    continue
                break
            rest = text[args_start:]
            rest = rest[: len(rest) - held_prefix(rest, shape.call_close)]
            calls.append(ParsedCall(name=name, arguments=rest, complete=False))
            break
        nxt = text.find(next_call, args_start)
        if nxt >= 0:
            calls.append(ParsedCall(name=name, arguments=text[args_start:nxt], complete=True))
            pos = nxt + len(shape.call_close) + len(shape.call_separator)
            continue
        rest = text[args_start:]
        if not finished:
            rest = rest[: len(rest) - held_prefix(rest, next_call)]
        calls.append(ParsedCall(name=name, arguments=rest, complete=finished))
        break
    return ParsedOutput(content=None, calls=calls)


def text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if kind not in ("text", "input_text", "output_text") or text is None:
            raise BadRequest(f"content part of type '{kind}' is not supported (text only)", param="messages")
        parts.append(text)
    return "".join(parts)


class ToolFormat:
    """One way of rendering prompts and reading tool calls; see the module docstring."""

    name: str
    shape: ToolCallShape
    # Whether output without tools is still constrained (octupus must open with its text token).
    constrain_chat: bool

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    def stop_token_ids(self) -> list[int]:
        raise NotImplementedError

    def special_pieces(self) -> frozenset[str]:
        """Strings inside the shape's pieces that are single added tokens of this tokenizer.

        A grammar must match them as tokens: the shape's declared special tokens, plus added
        tokens such as Qwen2.5's ``<tool_call>`` that happen to occur in the pieces.
        """
        vocab = self.tokenizer.get_vocab()
        missing = [p for p in self.shape.special_tokens if p not in vocab]
        if missing:
            raise ValueError(f"the {self.name} format needs special tokens {missing}, which the tokenizer lacks")
        s = self.shape
        pieces = [p for p in (s.text_open, s.call_open, s.name_close, s.call_close, s.call_separator) if p]
        added = {str(t) for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values()}
        return frozenset(self.shape.special_tokens | {a for a in added if any(a in p for p in pieces)})

    def parse(self, text: str, finished: bool) -> ParsedOutput:
        return parse_with_shape(self.shape, text, finished)


def _token_id(tokenizer: Any, token: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def saved_tool_format(tokenizer: Any) -> str:
    """The rendering (V1/V2) the model was trained with, from the ``octupus.json`` the training stages
    save beside it: a V1 model shown V2's tools block never calls a tool. Default V2."""
    from stages import toolcall_format

    path = Path(getattr(tokenizer, "name_or_path", "") or ".") / "octupus.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("tool_format", toolcall_format.DEFAULT_TOOL_FORMAT)
    except (OSError, ValueError, AttributeError):
        return toolcall_format.DEFAULT_TOOL_FORMAT
    if value not in toolcall_format.TOOL_FORMATS:
        raise ValueError(f"{path}: tool_format {value!r} is not one of {toolcall_format.TOOL_FORMATS}")
    log.info("octupus format: %s rendering (from %s)", value, path)
    return value


class OctupusFormat(ToolFormat):
    name = "octupus"
    shape = OCTUPUS_SHAPE
    constrain_chat = True

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        from stages import toolcall_format

        # The template saved with the model wins; the module's copy covers tokenizers saved without one.
        self.template = tokenizer.chat_template or toolcall_format.CHAT_TEMPLATE
        self.tool_format = saved_tool_format(tokenizer)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, chat_template=self.template,
            add_generation_prompt=True, tokenize=False, tool_format=self.tool_format)

    def stop_token_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]


class HermesFormat(ToolFormat):
    name = "hermes"
    shape = HERMES_SHAPE
    constrain_chat = False

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.template = tokenizer.chat_template
        if not self.template:
            if "<|im_start|>" not in tokenizer.get_vocab():
                raise ValueError("the hermes format needs a chat template or a ChatML tokenizer (<|im_start|>)")
            log.warning("the tokenizer has no chat template; using plain ChatML")
            self.template = CHATML_TEMPLATE
        self.template_renders_tools = self._template_renders_tools()
        log.info("hermes format: chat template %s tools itself",
                 "renders" if self.template_renders_tools else "does not render; injecting")

    def _template_renders_tools(self) -> bool:
        probe = [{"type": "function", "function": {"name": "zz_probe_tool_zz", "description": "probe",
                                                    "parameters": {"type": "object", "properties": {}}}}]
        try:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe,
                                                      chat_template=self.template, add_generation_prompt=True,
                                                      tokenize=False)
        except Exception:  # a template that chokes on tools cannot render them
            return False
        return "zz_probe_tool_zz" in text

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        if self.template_renders_tools:
            msgs = []
            for m in messages:
                m = dict(m)
                if m.get("tool_calls"):
                    # Templates written for HF's convention expect arguments as a mapping.
                    m["tool_calls"] = [{"type": "function", "id": c.get("id"), "function": {
                        "name": c["function"]["name"],
                        "arguments": _loads_or_keep(c["function"]["arguments"])}} for c in m["tool_calls"]]
                msgs.append(m)
            return self.tokenizer.apply_chat_template(msgs, tools=tools or None, chat_template=self.template,
                                                      add_generation_prompt=True, tokenize=False)
        return self.tokenizer.apply_chat_template(self._inject(messages, tools), chat_template=self.template,
                                                  add_generation_prompt=True, tokenize=False)

    @staticmethod
    def _inject(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        system = ""
        rest = messages
        if messages and messages[0]["role"] == "system":
            system = messages[0].get("content") or ""
            rest = messages[1:]
        if tools:
            listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
            block = (
                "You can call functions. Their signatures, one JSON object per line, are between "
                "<tools> and </tools>:\n<tools>\n" + listing + "\n</tools>\n"
                "To call a function, answer with one block per call:\n"
                '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>'
            )
            system = (system + "\n\n" + block) if system else block
        if system:
            out.append({"role": "system", "content": system})
        for m in rest:
            if m["role"] == "assistant" and m.get("tool_calls"):
                blocks = [
                    HERMES_SHAPE.call_open + c["function"]["name"] + HERMES_SHAPE.name_close
                    + c["function"]["arguments"] + HERMES_SHAPE.call_close
                    for c in m["tool_calls"]
                ]
                text = (m.get("content") or "")
                text = (text + "\n" if text else "") + HERMES_SHAPE.call_separator.join(blocks)
                out.append({"role": "assistant", "content": text})
            elif m["role"] == "tool":
                out.append({"role": "user",
                            "content": "<tool_response>\n" + (m.get("content") or "") + "\n</tool_response>"})
            else:
                out.append({"role": m["role"], "content": m.get("content") or ""})
        return out

    def stop_token_ids(self) -> list[int]:
        ids = [self.tokenizer.eos_token_id]
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = _token_id(self.tokenizer, tok)
            if tid is not None and tid not in ids:
                ids.append(tid)
        return [i for i in ids if i is not None]


def _loads_or_keep(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return arguments


FORMATS: dict[str, type[ToolFormat]] = {"octupus": OctupusFormat, "hermes": HermesFormat}


def detect_format(tokenizer: Any) -> str:
    """``octupus`` when the tokenizer carries the project's call token, else ``hermes``."""
    return "octupus" if OCTUPUS_SHAPE.call_open in tokenizer.get_vocab() else "hermes"


def make_format(name: str, tokenizer: Any) -> ToolFormat:
    if name == "auto":
        name = detect_format(tokenizer)
    if name not in FORMATS:
        raise ValueError(f"unknown format '{name}' (choose auto, octupus or hermes)")
    return FORMATS[name](tokenizer)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the conversation's order and flatten content; raise BadRequest naming the problem.

    Rules: system messages only at the start; at least one user message; a tool message answers
    a call of the closest preceding assistant message, by id; an assistant's calls must all be
    answered before the conversation goes on, and the conversation cannot end on unanswered calls.
    """
    out: list[dict[str, Any]] = []
    pending: set[str] = set()
    seen_other = False
    has_user = False
    for i, m in enumerate(messages):
        role = "system" if m["role"] == "developer" else m["role"]
        where = f"messages[{i}]"
        if role == "system":
            if seen_other:
                raise BadRequest(f"{where}: a system message must come before all other messages",
                                 param="messages")
            out.append({"role": "system", "content": text_of(m.get("content"))})
            continue
        seen_other = True
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not call_id:
                raise BadRequest(f"{where}: a tool message needs tool_call_id", param="messages")
            if call_id not in pending:
                raise BadRequest(f"{where}: tool message answers '{call_id}', which is not a pending "
                                 "tool call of the preceding assistant message", param="messages")
            pending.discard(call_id)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text_of(m.get("content"))})
            continue
        if pending:
            raise BadRequest(f"{where}: tool calls {sorted(pending)} have no tool message answering them",
                             param="messages")
        if role == "user":
            has_user = True
            out.append({"role": "user", "content": text_of(m.get("content"))})
        else:  # assistant
            msg: dict[str, Any] = {"role": "assistant", "content": text_of(m.get("content")) or None}
            calls = m.get("tool_calls") or []
            if calls:
                msg["tool_calls"] = []
                for c in calls:
                    fn = c["function"]
                    msg["tool_calls"].append({"id": c["id"], "type": "function",
                                              "function": {"name": fn["name"], "arguments": fn["arguments"]}})
                    pending.add(c["id"])
            out.append(msg)
    if pending:
        raise BadRequest(f"the conversation ends with unanswered tool calls {sorted(pending)}", param="messages")
    if not has_user:
        raise BadRequest("the conversation needs at least one user message", param="messages")
    return out
