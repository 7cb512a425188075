"""Tool-call formats the server speaks: how a conversation becomes a prompt, and which shape its output has.

Both formats' output shapes live in :mod:`toolcall.shapes`: the decision between text and calls,
then calls as ``call_open name name_close arguments call_close`` joined by ``call_separator``.

- ``octupus``: the project's special-token format (trained models), rendered with the project's
  chat template (:mod:`toolcall.chat_template`) and the recipe the model was trained with
  (:func:`toolcall.metadata.saved_tool_format`).
- ``hermes``: stock instruct models (ChatML, tools listed in the system prompt, calls written as
  ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``). When the model's own chat
  template cannot render tools (SmolLM2's cannot), tools and past calls are injected as text.

The same shape drives the grammar (``serve.constraints``) and the parser (:mod:`toolcall.parser`),
so what the grammar allows is exactly what the parser reads, for streamed and non-streamed output alike.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from toolcall.chat_template import CHAT_TEMPLATE
from toolcall.metadata import saved_tool_format
from toolcall.parser import ParsedOutput, parse_turn
from toolcall.shapes import HERMES_SHAPE, OCTUPUS_SHAPE, ToolCallShape

log = logging.getLogger(__name__)

# Used only when a ChatML tokenizer ships without a template.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# OpenAI allows [a-zA-Z0-9_-]{1,64}; dots are accepted too because BFCL's names may carry them.
# The name is written verbatim into the grammar and, for hermes, into a JSON string, so nothing
# outside this set may pass.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


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
        return parse_turn(self.shape, text, finished)


def _token_id(tokenizer: Any, token: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


class OctupusFormat(ToolFormat):
    name = "octupus"
    shape = OCTUPUS_SHAPE
    constrain_chat = True

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        # The template saved with the model wins; the package's copy covers tokenizers saved without one.
        self.template = tokenizer.chat_template or CHAT_TEMPLATE
        self.tool_format = saved_tool_format(Path(getattr(tokenizer, "name_or_path", "") or "."))

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
