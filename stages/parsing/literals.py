"""Python-literal reading: JSON first, then a python repr (single quotes, True/None), never evaluated.

Raw rows write tool lists, calls and results as JSON or as python reprs. Simple reprs are rewritten
to JSON text (fast); anything else is read with ``ast`` and a whitelist of literal nodes.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from stages.parsing.json_codec import STDLIB_JSON, JsonCodec

_NAME_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def literal(node: ast.AST) -> Any:
    """Value of a literal expression; JSON spellings (true/false/null) accepted. Never evaluates code."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAME_LITERALS:
        return _NAME_LITERALS[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking is not a literal")
        return {literal(k): literal(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"not a literal: {type(node).__name__}")



# Strings (either quote) are matched whole, so True/False/None are only seen outside them.
_PY_TOKEN = re.compile(r"""'([^'\\]*)'|"(?:[^"\\]|\\.)*"|\b(True|False|None)\b""")
_PY_WORDS = {"True": "true", "False": "false", "None": "null"}
_PY_WORD = re.compile(r"\b(True|False|None)\b")


def _py_word(m: re.Match[str]) -> str:
    return _PY_WORDS[m.group(1)]


def _python_repr_as_json(text: str) -> str | None:
    """Rewrite a simple python repr as JSON text: 'x' -> "x", True -> true, None -> null.

    Single-quoted strings with a backslash are left to ``ast`` (their escapes differ from JSON's).
    """
    if "\\'" in text:
        return None
    if '"' not in text and "\\" not in text and text.count("'") % 2 == 0:
        # The usual case, done with str methods: every quote pairs with the next one, so the
        # pieces between quotes alternate outside/inside strings, as the token regex reads them.
        if "True" not in text and "False" not in text and "None" not in text:
            return text.replace("'", '"')
        pieces = text.split("'")
        pieces[::2] = [_PY_WORD.sub(_py_word, piece) for piece in pieces[::2]]
        return '"'.join(pieces)

    def swap(m: re.Match[str]) -> str:
        if m.group(2) is not None:
            return _PY_WORDS[m.group(2)]
        if m.group(0)[0] == '"':
            return m.group(0)
        return '"' + m.group(1).replace('"', '\\"') + '"'

    return _PY_TOKEN.sub(swap, text)


def parse_loose(text: str, codec: JsonCodec = STDLIB_JSON) -> Any:
    """JSON first; then a python-repr literal (single quotes, True/None), never evaluated.

    Simple reprs are rewritten to JSON (fast); anything else is read with ``ast``.
    """
    # Valid JSON holds a quote character only inside a "..." string: without '"', a "'" means a
    # python repr, and the failing JSON attempt (an exception) is skipped.
    if '"' in text or "'" not in text:
        try:
            return codec.loads(text)
        except ValueError:
            pass
        except RecursionError:  # nesting deeper than the parser goes: not data to keep
            raise ValueError("nested too deeply") from None
    rewritten = _python_repr_as_json(text)
    if rewritten is not None:
        try:
            return codec.loads_no_constants(rewritten)
        except ValueError:
            pass
    try:
        return literal(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"neither JSON nor a python literal: {exc}") from None


def whole_floats_to_int(value: Any) -> Any:
    # ToolACE writes integers as floats (id=152.0); an int is valid for both integer and number.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [whole_floats_to_int(v) for v in value]
    if isinstance(value, dict):
        return {k: whole_floats_to_int(v) for k, v in value.items()}
    return value

