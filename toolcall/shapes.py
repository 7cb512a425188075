"""How an assistant turn looks in each format, independent of any constraint engine.

One shape drives both the grammar (``serve.constraints`` compiles it) and the parser
(:mod:`toolcall.parser`), so what the grammar allows is exactly what the parser reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from toolcall.tokens import CONTENT, FUNCTION_CALL, PARAMETERS


@dataclass(frozen=True)
class ToolCallShape:
    """A text answer is ``text_open + text``. A call is
    ``call_open + name + name_close + <JSON object arguments> + call_close``; several calls are
    joined by ``call_separator``. The turn ends with the tokenizer's eos token. ``special_tokens``
    lists the marker strings that are single special tokens (a grammar must match them as tokens,
    not as text); an empty ``text_open`` means text needs no marker.
    """

    text_open: str
    call_open: str
    name_close: str
    call_close: str = ""
    call_separator: str = ""
    special_tokens: frozenset[str] = field(default_factory=frozenset)

    def render_call(self, name: str, arguments: str) -> str:
        return f"{self.call_open}{name}{self.name_close}{arguments}{self.call_close}"

    def render_calls(self, calls: Iterable[tuple[str, str]]) -> str:
        return self.call_separator.join(self.render_call(n, a) for n, a in calls)


# The project's format (trained models): the first token decides between text and calls, and a
# name ends at a special token, so names that are prefixes of each other stay distinct.
OCTUPUS_SHAPE = ToolCallShape(
    text_open=CONTENT,
    call_open=FUNCTION_CALL,
    name_close=PARAMETERS,
    call_close="",
    call_separator="",
    special_tokens=frozenset({CONTENT, FUNCTION_CALL, PARAMETERS}),
)

# Stock instruct models (Hermes / Qwen2.5 style): calls written as
# ``<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>``, text without a marker.
HERMES_SHAPE = ToolCallShape(
    text_open="",
    call_open='<tool_call>\n{"name": "',
    name_close='", "arguments": ',
    call_close="}\n</tool_call>",
    call_separator="\n",
    special_tokens=frozenset(),
)


@dataclass(frozen=True)
class ReasoningMarkers:
    """How a reasoning model thinks before its answer: ``open + reasoning + close + separator``,
    then the answer in the format's :class:`ToolCallShape`. ``open`` and ``close`` are single tokens
    of the model's tokenizer; the reasoning is free text that never holds ``close``.
    """

    open: str
    close: str
    separator: str = ""


# Qwen3 and its successors: ``<think>\n...\n</think>\n\n`` before the (hermes-shaped) answer.
QWEN3_REASONING = ReasoningMarkers(open="<think>", close="</think>", separator="\n\n")
