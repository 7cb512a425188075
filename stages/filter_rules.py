"""The filter rules: every rule a row can be dropped by, and the exception that names one.

A row that breaks a rule is dropped and counted once, under that rule's name in
``metrics/filter.json`` (see :data:`RULES`). The reading rules are raised as :class:`Drop` by the
row pipeline (``stages/row_pipeline.py``: the kind's normalizer, then the structure check); the
table rules run in ``stages/filter.py``.
"""

from __future__ import annotations

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


# Defects that are repaired instead of dropped: the row is kept with the repaired schema and counted
# once per fix, over the kept rows, under "fixed" in metrics/filter.json.
FIXES = (
    "enum_null",               # a None in an enum whose type excludes null (Hermes: 'enum': [None])
)


class Drop(Exception):
    """A row breaks a rule; ``rule`` is the metrics key it is counted under."""

    def __init__(self, rule: str, detail: str = "") -> None:
        super().__init__(f"{rule}: {detail}" if detail else rule)
        self.rule = rule
