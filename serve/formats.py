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
from toolcall.shapes import HERMES_SHAPE, OCTUPUS_SHAPE, QWEN3_REASONING, ReasoningMarkers, ToolCallShape

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
    # A reasoning model's thinking block before the answer (None: the format does not reason).
    reasoning: ReasoningMarkers | None = None

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], thinking: bool = False) -> str:
        """The prompt; ``thinking`` (reasoning formats only) lets the model think before answering."""
        raise NotImplementedError

    def stop_token_ids(self) -> list[int]:
        raise NotImplementedError

    def opens_in_prompt(self, text: str) -> bool:
        """Whether the prompt already opened the thinking block (reasoning formats)."""
        return False

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
        markers = {m for m in (self.reasoning.open, self.reasoning.close) if m} if self.reasoning else set()
        added = {str(t) for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values()}
        return frozenset(self.shape.special_tokens | markers | {a for a in added if any(a in p for p in pieces)})

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

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], thinking: bool = False) -> str:
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

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], thinking: bool = False) -> str:
        return self._render(messages, tools)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], **template_kwargs: Any) -> str:
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
                                                      add_generation_prompt=True, tokenize=False, **template_kwargs)
        return self.tokenizer.apply_chat_template(self._inject(messages, tools), chat_template=self.template,
                                                  add_generation_prompt=True, tokenize=False, **template_kwargs)

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


class Qwen3Format(HermesFormat):
    """Qwen3-style reasoning models: a thinking block (``<think>\\n...\\n</think>\\n\\n``), then the
    hermes answer. The model's own template renders the prompt with the family's switch
    (``enable_thinking``); an earlier assistant turn's ``reasoning_content`` goes to the template,
    which keeps it where the family keeps it. The thinking is free text bounded by a token budget
    (``GrammarSpec.reasoning``); the choice between text and calls, and every call, are enforced after
    it as in ``hermes``, and nothing written inside it is ever read as a call.
    """

    name = "qwen3"
    reasoning = QWEN3_REASONING
    constrain_chat = False  # without tools and thinking off, plain text; thinking is always constrained

    def __init__(self, tokenizer: Any) -> None:
        missing = [m for m in (QWEN3_REASONING.open, QWEN3_REASONING.close, "<tool_call>")
                   if m not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the qwen3 format needs the tokens {missing}, which the tokenizer lacks")
        super().__init__(tokenizer)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], thinking: bool = False) -> str:
        text = self._render(messages, tools, enable_thinking=thinking)
        r = QWEN3_REASONING
        if not thinking and not text.endswith(r.close + r.separator):
            # A template without the switch (a thinking-only model's): close the block it opened, or
            # write an empty one, as the family's switch does.
            text += ("\n" if self.opens_in_prompt(text) else r.open + "\n\n") + r.close + r.separator
        return text

    def opens_in_prompt(self, text: str) -> bool:
        """Whether the template already opened the thinking block (thinking-only models' templates do)."""
        return text.rstrip("\n").endswith(QWEN3_REASONING.open)


def _loads_or_keep(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return arguments


FORMATS: dict[str, type[ToolFormat]] = {"octupus": OctupusFormat, "hermes": HermesFormat, "qwen3": Qwen3Format}


def detect_format(tokenizer: Any) -> str:
    """``octupus`` when the tokenizer carries the project's call token; ``qwen3`` when it has the
    thinking tokens and ``<tool_call>``; else ``hermes``."""
    vocab = tokenizer.get_vocab()
    if OCTUPUS_SHAPE.call_open in vocab:
        return "octupus"
    if all(t in vocab for t in (QWEN3_REASONING.open, QWEN3_REASONING.close, "<tool_call>")):
        return "qwen3"
    return "hermes"


def make_format(name: str, tokenizer: Any) -> ToolFormat:
    if name == "auto":
        name = detect_format(tokenizer)
    if name not in FORMATS:
        raise ValueError(f"unknown format '{name}' (choose auto, {', '.join(FORMATS)})")
    return FORMATS[name](tokenizer)
