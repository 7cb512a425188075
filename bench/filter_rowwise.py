"""The plain row-by-row baseline of the filter rules, the way the original project filtered.

Same normalizers and the same rules as ``stages/filter.py`` (so it keeps exactly the same rows),
written as per-row loops: every string parsed again for every row, ``json.loads`` of each row's
tools, ``jsonschema`` schema checks and ``jsonschema.validate`` per tool and per call (which
re-checks and re-compiles the schema each time), list-based duplicate removal, and a Python counter
for the per-function cap. It exists to be measured against (``python -m bench filter``) and to
prove the polars path changes nothing (tests/test_filter.py).
"""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError

from stages.filter_rules import Drop
from stages.parsing.parsers import Parsers
from stages.row_pipeline import prepare_row


def filter_rowwise(kind: str, lines: list[str], keep_dots: bool, max_chars: int,
                   max_rows_per_function: int | None) -> tuple[list[tuple[str, str]], Counter[str]]:
    """Kept (messages, tools) rows sorted like the polars path, and drops per rule."""
    parsers = Parsers(keep_dots=keep_dots, cache=False)
    drops: Counter[str] = Counter()
    seen: list[tuple[str, str]] = []
    candidates: list[tuple[int, str, str, list[str]]] = []
    for line in lines:
        try:
            row = prepare_row(kind, line, parsers)
        except Drop as drop:
            drops[drop.rule] += 1
            continue
        except Exception:  # noqa: BLE001 - same contract as the stage: a row never crashes the run
            drops["unparseable"] += 1
            continue
        messages, tools_json, calls = row.messages, row.tools, row.calls
        tools = json.loads(tools_json)
        schemas = {}
        bad_schema = False
        for tool in tools:
            schema = tool["function"]["parameters"]
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            try:
                cls.check_schema(schema)
            except SchemaError:
                bad_schema = True
            schemas[tool["function"]["name"]] = (schema, cls)
        if bad_schema:
            drops["bad_tool_schema"] += 1
            continue
        if any(name not in schemas for name, _ in calls):
            drops["unknown_tool"] += 1
            continue
        invalid = False
        for name, arguments in calls:
            schema, cls = schemas[name]
            try:
                jsonschema.validate(json.loads(arguments), schema, cls=cls)
            except ValidationError:
                invalid = True
        if invalid:
            drops["invalid_arguments"] += 1
            continue
        if len(messages) + len(tools_json) > max_chars:
            drops["too_long"] += 1
            continue
        if (messages, tools_json) in seen:
            drops["duplicate"] += 1
            continue
        seen.append((messages, tools_json))
        candidates.append((row.key, messages, tools_json, sorted({n for n, _ in calls})))
    candidates.sort(key=lambda c: (c[0], c[1]))
    kept: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    for _, messages, tools_json, names in candidates:
        # Ranked by content hash, so the cap does not depend on input order; a dropped row still
        # takes its place in every function's ranking, as in the polars path.
        over = max_rows_per_function is not None and any(counts[n] >= max_rows_per_function for n in names)
        counts.update(names)
        if over:
            drops["function_cap"] += 1
        else:
            kept.append((messages, tools_json))
    return kept, drops
