"""Call lists in python call syntax: ``[F(a="x", n=2.0), G Name()]`` -> [(name, arguments)].

ToolACE writes an assistant's calls this way. Names may hold spaces, dots and slashes; argument
values are literals only (JSON or python spelling), read without evaluating anything. The usual
list is read as JSON after quoting its keywords; anything else goes through ``ast``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from stages.parsing.json_codec import STDLIB_JSON, JsonCodec
from stages.parsing.literals import literal, whole_floats_to_int

_QUOTES = "\"'"


# The characters the scan stops at, and a whole quoted string (escapes skip one character).
_SCAN_STOP = re.compile(r"[\"'()\[\]{}]")
_QUOTED = {q: re.compile(q + r"(?:[^" + q + r"\\]|\\.)*" + q, re.S) for q in _QUOTES}


def _scan_to_close(text: str, start: int) -> int:
    """Index just past the ')' that closes the '(' at ``start``; quotes and brackets respected.

    Jumps from one bracket or quote to the next with regexes instead of walking every character.
    """
    depth = 0
    i = start
    stop = _SCAN_STOP.search
    while True:
        m = stop(text, i)
        if m is None:
            raise ValueError("unbalanced call")
        at = m.start()
        ch = text[at]
        if ch in _QUOTES:
            quoted = _QUOTED[ch].match(text, at)
            if quoted is None:
                raise ValueError("unbalanced call")  # the string never ends
            i = quoted.end()
            continue
        if ch in "([{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return at + 1
        i = at + 1


def _keywords_as_json(args_text: str, codec: JsonCodec = STDLIB_JSON) -> dict[str, Any] | None:
    """Fast path: ``a="x", n=2`` read as the JSON object ``{"a": "x", "n": 2}``; None if that fails.

    A keyword-looking match inside a string inserts quotes into it and breaks the JSON, and a
    count check catches repeated keywords, so a success here means the same as the ast reading.
    """
    if not args_text.strip():
        return {}
    text, found = _quote_keywords(args_text)
    try:
        obj = codec.loads_no_constants("{" + text + "}")
    except ValueError:
        return None
    if not isinstance(obj, dict) or len(obj) != found:
        return None
    if _FLOAT_MARK.search(text) is None:
        return obj  # no number literal with a fraction or exponent: no float to turn into an int
    return {k: whole_floats_to_int(v) for k, v in obj.items()}


# A keyword at the start of one comma-separated piece: (leading space, name), up to its '='.
_PIECE_KEYWORD = re.compile(r"(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")


def _quote_keywords(args_text: str) -> tuple[str, int]:
    r"""Every ``name=`` at the start or after a comma becomes ``"name": ``; returns (text, count).

    Such a keyword starts at the text's start or at a comma and holds no comma, so matching at the
    start of each comma-separated piece finds exactly what a regex scan of the whole text finds
    (``(^\s*|,\s*)(name)\s*=(?!=)``), without trying the pattern at every position.
    """
    pieces = args_text.split(",")
    found = 0
    for i, piece in enumerate(pieces):
        m = _PIECE_KEYWORD.match(piece)
        if m is not None:
            pieces[i] = f'{m.group(1)}"{m.group(2)}": {piece[m.end():]}'
            found += 1
    return ",".join(pieces), found


# A JSON float literal always has a digit right before its '.' or exponent 'e'/'E'.
_FLOAT_MARK = re.compile(r"[0-9][.eE]")


def _keywords_by_ast(call_text: str) -> dict[str, Any]:
    call = ast.parse("f" + call_text, mode="eval").body
    if not isinstance(call, ast.Call) or call.args:
        raise ValueError("positional arguments")
    args: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError("**kwargs in a call")
        if kw.arg in args:
            raise ValueError(f"argument {kw.arg!r} given twice")
        args[kw.arg] = whole_floats_to_int(literal(kw.value))
    return args


_NOT_IN_CALL_NAME = re.compile(r"[\"'\[\]{}=,]")


def _call_name(body: str, start: int, paren: int) -> str:
    name = body[start:paren].strip()
    if not name or _NOT_IN_CALL_NAME.search(name):
        raise ValueError(f"bad call name {name!r}")
    return name


def parse_call_list(text: str, codec: JsonCodec = STDLIB_JSON) -> list[tuple[str, dict[str, Any]]]:
    """``[F(a="x", n=2.0), G Name()]`` -> [(name, args)]; names may hold spaces, dots, slashes.

    Values are literals only (JSON or python spelling); nothing is evaluated.
    """
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError("not a bracket list")
    body = body[1:-1].strip()
    paren = body.find("(")
    if paren > 0 and body.endswith(")") and ")" not in body[paren + 1:-1]:
        # Most lists hold one call: if the whole rest reads as one JSON keyword list, it is one call.
        # A ")" in between usually closes an earlier call; the loop below reads those (and the rare
        # ")" inside a string) the same way, without a failed JSON attempt first.
        args = _keywords_as_json(body[paren + 1:-1], codec)
        if args is not None:
            return [(_call_name(body, 0, paren), args)]
    calls: list[tuple[str, dict[str, Any]]] = []
    i = 0
    while i < len(body):
        while i < len(body) and body[i] in " \n\t,":
            i += 1
        if i >= len(body):
            break
        paren = body.find("(", i)
        if paren < 0:
            raise ValueError("call without arguments list")
        name = _call_name(body, i, paren)
        end = _scan_to_close(body, paren)
        args = _keywords_as_json(body[paren + 1:end - 1], codec)
        calls.append((name, args if args is not None else _keywords_by_ast(body[paren:end])))
        i = end
    if not calls:
        raise ValueError("empty call list")
    return calls


# An assistant turn that starts like a call list ("[" name "("); plain answers are not parsed.
LOOKS_LIKE_CALLS = re.compile(r"^\s*\[\s*[^\[\]\"'(){}=,]+\(")
