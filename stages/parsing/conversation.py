"""A normalized row (:class:`Conversation`) and the builder each kind's normalizer fills it with.

The builder keeps the rules every source shares: tool names sanitised, arguments written as
compact JSON, and each tool result linked to an open call of the last assistant turn. Call ids
are placeholders here; the row pipeline replaces them with ids derived from the content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stages.filter_rules import Drop
from stages.parsing.parsers import Parsers
from stages.parsing.tools import NO_TOOLS, ToolSet


@dataclass
class Conversation:
    """A normalized row. Tool messages carry ``tool_call_id`` placeholders until the row is finalized
    (``stages.row_pipeline.finalize``)."""

    messages: list[dict[str, Any]]
    tools: ToolSet = NO_TOOLS
    n_calls: int = 0  # placeholders "#0" .. "#<n_calls - 1>" stand for the call ids
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON) in order


class ConversationBuilder:
    """Accumulates messages; links tool results to the calls of the last assistant turn."""

    def __init__(self, parsers: Parsers) -> None:
        self.p = parsers
        self.messages: list[dict[str, Any]] = []
        self._open: list[tuple[str, str]] = []  # (placeholder id, name) of unanswered calls
        self.n_calls = 0
        self.call_list: list[tuple[str, str]] = []  # (name, arguments JSON) of every call, in order

    def text(self, role: str, content: Any) -> None:
        if not isinstance(content, str):
            raise Drop("empty_turn", f"{role} content is {type(content).__name__}")
        if self._open:
            self._open = []
        self.messages.append({"role": role, "content": content})

    def calls(self, calls: list[tuple[Any, Any]], merge: bool = False, content: str | None = None) -> None:
        """Add an assistant call turn; ``merge`` joins it to a directly preceding call turn
        (the legacy format writes parallel calls as consecutive assistant messages). ``content``
        is text the turn wrote before its calls (kept in the row; the template renders the calls)."""
        last = self.messages[-1] if self.messages else None
        if merge and last is not None and last["role"] == "assistant" and last.get("tool_calls"):
            tool_calls = last["tool_calls"]
        else:
            tool_calls = []
            self._open = []
            self.messages.append({"role": "assistant", "content": content, "tool_calls": tool_calls})
        for name, args in calls:
            if not isinstance(args, dict):
                raise Drop("bad_call", "arguments are not an object")
            clean = self.p.name(name)
            placeholder = f"#{self.n_calls}"
            self.n_calls += 1
            arguments = self.p.json.dumps(args)
            tool_calls.append({"id": placeholder, "type": "function",
                               "function": {"name": clean, "arguments": arguments}})
            self._open.append((placeholder, clean))
            self.call_list.append((clean, arguments))

    def result(self, name: Any, content: str) -> None:
        if not self._open:
            raise Drop("tool_result_mismatch", "a tool result answers no call")
        at = 0
        if name is not None:
            # Results may come back in any order; a named one answers the first open call of that name.
            clean = self.p.name(name)
            for at, (_, call_name) in enumerate(self._open):  # noqa: B007 (read after the break)
                if call_name == clean:
                    break
            else:
                raise Drop("tool_result_mismatch", f"result of {name!r} answers no open call")
        placeholder, _ = self._open.pop(at)
        self.messages.append({"role": "tool", "tool_call_id": placeholder, "content": content})

    def conversation(self, tools: ToolSet = NO_TOOLS) -> Conversation:
        return Conversation(self.messages, tools, self.n_calls, self.call_list)


def turns_of(row: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The raw row's list of turns under ``key``; every turn must be an object."""
    turns = row.get(key)
    if not isinstance(turns, list):
        raise Drop("unparseable", f"'{key}' is not a list of turns")
    for turn in turns:
        if not isinstance(turn, dict):
            raise Drop("unparseable", f"'{key}' is not a list of turns")
    return turns
