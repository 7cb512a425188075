"""The filter rules: every rule a row can be dropped by, the exception that names one, and the
per-row structure rules.

A row that breaks a rule is dropped and counted once, under that rule's name in
``metrics/filter.json`` (see :data:`RULES`). The normalizers (``stages/kinds/``) raise
:class:`Drop` while reading a row; :func:`check_structure` is the row pipeline's check step
(``stages/row_pipeline.py``); the table rules run in ``stages/filter.py``.
"""

from __future__ import annotations

from typing import Any

# Every rule a row can be dropped by. A row is counted once, under the first rule it breaks: first
# the reading rules (unparseable ... tool_result_mismatch) in the order they are met while the row
# is normalized; then the table rules in this order: bad_tool_schema (JSON Schema meta-check of
# each offered tool), unknown_tool, invalid_arguments, too_long, duplicate, function_cap.
RULES = (
    "unparseable",             # not JSON, not the source's schema, or the normalizer failed
    "toxic",                   # flagged by the source itself (WildChat)
    "unsupported_tool_format", # ToolACE variants that list tools as free text, not JSON
    "bad_tool_schema",         # a tool's parameters are not a usable JSON schema
    "invalid_name",            # a function name that cannot be sanitised, or two tools that collide
    "bad_call",                # a call that cannot be read (python-like list, <tool_call>, function_call)
    "role_order",              # system first, then user/assistant alternating, tools after calls
    "empty_turn",              # a user/assistant/tool turn with no text (and no calls)
    "tool_result_mismatch",    # results that answer no call, the wrong call, or calls left unanswered
    "unknown_tool",            # a call to a function the row does not offer
    "invalid_arguments",       # arguments that do not validate against the tool's schema
    "too_long",                # rendered row longer than max_chars
    "duplicate",               # exact duplicate of another row of the same source
    "function_cap",            # a function already has max_rows_per_function rows
)


class Drop(Exception):
    """A row breaks a rule; ``rule`` is the metrics key it is counted under."""

    def __init__(self, rule: str, detail: str = "") -> None:
        super().__init__(f"{rule}: {detail}" if detail else rule)
        self.rule = rule


def check_structure(messages: list[dict[str, Any]]) -> None:
    """Role order, non-empty turns and call/result pairing; raises :class:`Drop`.

    Per turn the checks run in this order: the role may follow the previous one (role_order),
    no calls are left unanswered (tool_result_mismatch), the turn has text (empty_turn).
    """
    open_calls = 0
    prev = None
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "tool":
            if open_calls == 0 or (prev != "assistant" and prev != "tool"):
                raise Drop("tool_result_mismatch", "tool message without a pending call")
            open_calls -= 1
            if not msg["content"].strip():
                raise Drop("empty_turn", "empty tool result")
        elif role == "user" or role == "assistant":
            if role == "user" and not (prev is None or prev == "system" or prev == "assistant"):
                raise Drop("role_order", f"user after {prev}")
            if role == "assistant" and not (prev == "user" or prev == "tool"):
                raise Drop("role_order", f"assistant after {prev}")
            if open_calls:
                raise Drop("tool_result_mismatch", "calls left unanswered before the next turn")
            tool_calls = msg.get("tool_calls") if role == "assistant" else None
            if tool_calls:
                open_calls = len(tool_calls)
            else:
                content = msg.get("content")
                if not (isinstance(content, str) and content.strip()):
                    raise Drop("empty_turn", f"empty {role} turn")
        elif role == "system":
            if i != 0:
                raise Drop("role_order", "system message after the start")
        else:
            raise Drop("role_order", f"unknown role {role!r}")
        prev = role
    # A row must end on something the model learns to produce: an answer or a call.
    if prev != "assistant":
        raise Drop("role_order", f"conversation ends on a {prev or 'nothing'} turn")
