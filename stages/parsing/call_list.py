"""Call lists in python call syntax: ``[F(a="x", n=2.0), G Name()]`` -> [(name, arguments)].

ToolACE writes an assistant's calls this way. Names may hold spaces, dots and slashes; argument
values are literals only (JSON or python spelling), read without evaluating anything. The usual
list is read as JSON after quoting its keywords; anything else goes through ``ast``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
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


# Characters that end a value at the top level of a keyword list, or change the nesting.
_VALUE_STOP = re.compile(r"[\"'()\[\]{},]")
# A keyword as the schema may name it: anything up to "=" but separators, brackets and quotes
# (riot-id=..., $top=..., not only python identifiers).
_ANY_KEYWORD = re.compile(r"\s*([^\s=,()\[\]{}\"']+)\s*=(?!=)")


def _value_end(text: str, start: int) -> int:
    """Index of the "," that ends the value starting at ``start`` (or the end of the text)."""
    depth = 0
    i = start
    while True:
        m = _VALUE_STOP.search(text, i)
        if m is None:
            if depth:
                raise ValueError("unbalanced value")
            return len(text)
        at = m.start()
        ch = text[at]
        if ch in _QUOTES:
            quoted = _QUOTED[ch].match(text, at)
            if quoted is None:
                raise ValueError("unterminated string")
            i = quoted.end()
            continue
        if ch == "," and depth == 0:
            return at
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced value")
        i = at + 1


def _literal_value(text: str, codec: JsonCodec) -> Any:
    try:
        return codec.loads_no_constants(text)
    except ValueError:
        pass
    try:
        return literal(ast.parse(text, mode="eval").body)
    except SyntaxError as exc:
        raise ValueError(f"not a literal: {text[:40]!r}") from exc


def _keywords_by_scan(args_text: str, codec: JsonCodec = STDLIB_JSON) -> dict[str, Any]:
    """``riot-id="x", $top=2`` -> ``{"riot-id": "x", "$top": 2}``: keyword names as the schema
    spells them, which python's grammar does not allow. Values are literals, never evaluated."""
    args: dict[str, Any] = {}
    i = 0
    while args_text[i:].strip():
        m = _ANY_KEYWORD.match(args_text, i)
        if m is None:
            raise ValueError("positional arguments")
        name = m.group(1)
        if name in args:
            raise ValueError(f"argument {name!r} given twice")
        end = _value_end(args_text, m.end())
        value = args_text[m.end():end].strip()
        if not value:
            raise ValueError(f"argument {name!r} has no value")
        args[name] = whole_floats_to_int(_literal_value(value, codec))
        i = end + 1
    return args


def _read_arguments(body: str, paren: int, end: int, codec: JsonCodec) -> dict[str, Any]:
    args = _keywords_as_json(body[paren + 1:end - 1], codec)
    if args is not None:
        return args
    try:
        return _keywords_by_ast(body[paren:end])
    except (SyntaxError, ValueError):
        # Keyword names python does not allow (riot-id, $top): read them as the schema spells them.
        return _keywords_by_scan(body[paren + 1:end - 1], codec)


_NOT_IN_CALL_NAME = re.compile(r"[\"'\[\]{}=,]")


def _call_name(body: str, start: int, paren: int, names: Sequence[str] = ()) -> str:
    name = body[start:paren].strip()
    if not name or (_NOT_IN_CALL_NAME.search(name) and name not in names):
        raise ValueError(f"bad call name {name!r}")
    return name


def _known_call_at(text: str, at: int, names: Sequence[str]) -> tuple[str, int] | None:
    """(name, index of its "(") when an offered tool's name, followed by "(", starts at ``at``.

    Real tool names hold what a call list cannot otherwise delimit: commas ("Latest SPAC Deals,
    IPOs, Closings"), parentheses ("Current Weather (Detailed)"), quotes ("Get User's Stories"),
    braces ("GET /categories/{categoryId}/v1"). The longest offered name wins.
    """
    best: tuple[str, int] | None = None
    for name in names:
        if name and text.startswith(name, at) and (best is None or len(name) > len(best[0])):
            paren = at + len(name)
            while paren < len(text) and text[paren] in " \t":
                paren += 1
            if paren < len(text) and text[paren] == "(":
                best = (name, paren)
    return best


def parse_call_list(text: str, codec: JsonCodec = STDLIB_JSON,
                    names: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``[F(a="x", n=2.0), G Name()]`` -> [(name, args)]; names may hold spaces, dots, slashes,
    and, when they are among the offered tool ``names``, anything else.

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
            return [(_call_name(body, 0, paren, names), args)]
    calls: list[tuple[str, dict[str, Any]]] = []
    i = 0
    while i < len(body):
        while i < len(body) and body[i] in " \n\t,":
            i += 1
        if i >= len(body):
            break
        known = _known_call_at(body, i, names) if names else None
        if known is not None:
            name, paren = known
        else:
            paren = body.find("(", i)
            if paren < 0:
                raise ValueError("call without arguments list")
            name = _call_name(body, i, paren)
        end = _scan_to_close(body, paren)
        calls.append((name, _read_arguments(body, paren, end, codec)))
        i = end
    if not calls:
        raise ValueError("empty call list")
    return calls


# An assistant turn that starts like a call list ("[" name "("); plain answers are not parsed.
LOOKS_LIKE_CALLS = re.compile(r"^\s*\[\s*[^\[\]\"'(){}=,]+\(")


def _starts_with_known_call(text: str, names: Sequence[str]) -> bool:
    first = text[:1]
    if first != "[" and not first.isspace():
        return False  # the usual answer: no copy of it stripped
    at = len(text) - len(text.lstrip())
    if text[at:at + 1] != "[":
        return False
    at += 1
    while at < len(text) and text[at] in " \t\n":
        at += 1
    return _known_call_at(text, at, names) is not None


def starts_with_calls(text: str, names: Sequence[str] = ()) -> bool:
    """Whether ``text`` starts like a call list: generic names, or an offered tool's name."""
    return LOOKS_LIKE_CALLS.match(text) is not None or (bool(names) and _starts_with_known_call(text, names))


def trailing_call_list(text: str, names: Sequence[str]) -> int | None:
    """Where a call list closing ``text`` starts, after prose ("Let's proceed:\\n\\n[F(a=1)]"):
    the first "[" that opens with a call of an offered tool and whose rest of the text reads as
    calls. None if there is none (prose that only mentions brackets stays text)."""
    if not names or not (text.endswith("]") or (text[-1:].isspace() and text.rstrip().endswith("]"))):
        return None
    at = text.find("[")
    while at >= 0:
        if _starts_with_known_call(text[at:], names):
            try:
                parse_call_list(text[at:], STDLIB_JSON, names)
            except (ValueError, SyntaxError, RecursionError):
                pass
            else:
                return at
        at = text.find("[", at + 1)
    return None
