"""Normalizers: one raw row of each source kind -> OpenAI ``messages`` + OpenAI ``tools``.

Each ``normalize_<kind>(row)`` takes one decoded raw row (the hub schema, see
``/work/shared/samples/README.md`` and ``docs/design.md``) and returns a :class:`Conversation`, or
raises :class:`Drop` naming the rule the row breaks. Everything here is pure Python with no eval:
python-like literals and call lists are read with ``ast`` and a whitelist of literal nodes.

Parsing of the strings inside a row (tool lists, call lists, tool results) goes through
:class:`Parsers`. The plain instance parses every time with the stdlib ``json`` module (the
row-by-row baseline); the cached one (:func:`cached_parsers`) parses each distinct tool, tool
list, prompt and name once and reads/writes JSON with orjson (:data:`FAST_JSON`), which is what
the polars path uses. Both write
the same text: compact JSON (``","`` and ``":"`` separators, non-ASCII kept), the byte form
``stages.toolcall_format`` uses for arguments.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple

import orjson

KINDS = ("hermes_fc", "toolace", "fc_zh_hard", "openhermes", "wildchat")

# Tool names end up in OpenAI requests: the API allows [a-zA-Z0-9_-]{1,64}. Dots are kept only when
# the caller asks (keep_dots), because OpenAI rejects them and BFCL sends dotted names as "_".
NAME_OK = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
_NAME_BAD_RUN = re.compile(r"[^a-zA-Z0-9_.-]+")
_NAME_BAD_RUN_NODOT = re.compile(r"[^a-zA-Z0-9_-]+")


class Drop(Exception):
    """A row breaks a rule; ``rule`` is the metrics key it is counted under."""

    def __init__(self, rule: str, detail: str = "") -> None:
        super().__init__(f"{rule}: {detail}" if detail else rule)
        self.rule = rule


class ToolSet(NamedTuple):
    """A row's OpenAI tools, their JSON text, and (name, canonical schema JSON) per tool.

    Built from per-tool pieces, so a tool repeated across rows is encoded once. A named tuple
    rather than a frozen dataclass: one is built per distinct tool list, and frozen dataclasses
    are several times slower to construct.
    """

    tools: tuple[dict[str, Any], ...] = ()
    json: str = "[]"
    schemas: tuple[tuple[str, str], ...] = ()


NO_TOOLS = ToolSet()


@dataclass
class Conversation:
    """A normalized row. Tool messages carry ``tool_call_id`` placeholders until :func:`finalize`."""

    messages: list[dict[str, Any]]
    tools: ToolSet = NO_TOOLS
    n_calls: int = 0  # placeholders "#0" .. "#<n_calls - 1>" stand for the call ids
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON) in order


# ----------------------------------------------------------------------------------------------
# JSON reading and writing


class NeedsStdlibJson(Exception):
    """The fast codec cannot promise the stdlib's result for this row; read the row again with json.

    Raised when a value to write holds a float of 1e16 or more: orjson reads integers beyond 64 bits
    as floats (json keeps them exact), so such a value may differ from what json would have read.
    """


def _std_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _std_dumps_sorted(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _std_loads_no_constants(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _fast_loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity, lone surrogates and depth > 1024, which json accepts; json
        # also gives the error when both refuse. orjson accepts nothing json refuses.
        return json.loads(text)


def _fast_loads_no_constants(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _std_loads_no_constants(text)


def _fast_dumps(value: Any, option: int = 0) -> str:
    try:
        out = orjson.dumps(value, option=option)
    except TypeError:  # ints beyond 64 bits, non-string keys, lone surrogates: json's text
        return _std_dumps_sorted(value) if option else _std_dumps(value)
    if b"e+" in out:
        raise NeedsStdlibJson("float of 1e16 or more")
    if b"null" in out or b"e-" in out or b"0.0000" in out:
        # NaN/Infinity become null in orjson, and floats below 1e-4 are spelled differently
        # (0.00001 vs 1e-05); strings holding these bytes only cost the slower path.
        return _std_dumps_sorted(value) if option else _std_dumps(value)
    return out.decode()


def _fast_dumps_text(value: Any) -> str:
    """For values made of strings, None, lists and string-keyed dicts only (messages)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # lone surrogates
        return _std_dumps(value)


@dataclass(frozen=True)
class JsonCodec:
    """How the normalizers read and write JSON; both codecs give the same values and the same text.

    ``dumps*`` write compact JSON with non-ASCII kept. ``dumps_text`` is only for values made of
    strings, None, lists and string-keyed dicts.
    """

    name: str
    loads: Callable[[str], Any]
    loads_no_constants: Callable[[str], Any]  # NaN/Infinity refused
    dumps: Callable[[Any], str]
    dumps_sorted: Callable[[Any], str]
    dumps_text: Callable[[Any], str]


STDLIB_JSON = JsonCodec("json", json.loads, _std_loads_no_constants, _std_dumps, _std_dumps_sorted, _std_dumps)
FAST_JSON = JsonCodec("orjson", _fast_loads, _fast_loads_no_constants, _fast_dumps,
                      partial(_fast_dumps, option=orjson.OPT_SORT_KEYS), _fast_dumps_text)


# ----------------------------------------------------------------------------------------------
# Safe literals


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
        return {literal(k): literal(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"not a literal: {type(node).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a literal")  # NaN/Infinity: python's ast would not accept them either


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


def _whole_floats_to_int(value: Any) -> Any:
    # ToolACE writes integers as floats (id=152.0); an int is valid for both integer and number.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole_floats_to_int(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_floats_to_int(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------
# Names and schemas


def sanitize_name(name: Any, keep_dots: bool = False) -> str:
    """Function name -> ``[a-zA-Z0-9_-]`` (plus ``.`` with keep_dots), at most 64 chars."""
    if not isinstance(name, str):
        raise Drop("invalid_name", f"name is {type(name).__name__}")
    bad = _NAME_BAD_RUN if keep_dots else _NAME_BAD_RUN_NODOT
    clean = bad.sub("_", name.strip()).strip("_")[:64]
    if not clean or not NAME_OK.match(clean):
        raise Drop("invalid_name", repr(name))
    return clean


_TYPE_NAMES: dict[str, str | None] = {
    "object": "object", "dict": "object", "map": "object", "mapping": "object",
    "integer": "integer", "int": "integer", "long": "integer",
    "number": "number", "float": "number", "double": "number", "decimal": "number",
    "string": "string", "str": "string", "text": "string",
    "date": "string", "datetime": "string", "time": "string",
    "boolean": "boolean", "bool": "boolean",
    "array": "array", "list": "array", "tuple": "array",
    "null": "null", "none": "null", "nonetype": "null",
    "any": None,  # no type constraint
}
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "additionalItems")


def _fix_type(value: Any) -> str | list[str] | None:
    names = value if isinstance(value, list) else [value]
    fixed: list[str] = []
    for name in names:
        if not isinstance(name, str) or name.strip().lower() not in _TYPE_NAMES:
            raise Drop("bad_tool_schema", f"unknown type {name!r}")
        mapped = _TYPE_NAMES[name.strip().lower()]
        if mapped is None:
            return None
        if mapped not in fixed:
            fixed.append(mapped)
    if not fixed:
        return None
    return fixed if isinstance(value, list) and len(fixed) > 1 else fixed[0]


def fix_schema(node: Any) -> Any:
    """Python-style type names -> JSON Schema names, recursively; drops ``"required": null``."""
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        raise Drop("bad_tool_schema", f"schema is {type(node).__name__}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            mapped = _fix_type(value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "required":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                out["required"] = value
            elif value not in (None, False, True):
                raise Drop("bad_tool_schema", "required is not a list of names")
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: fix_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [fix_schema(sub) for sub in value]
        elif key in _SCHEMA_ONE and isinstance(value, (dict, bool)):
            out[key] = fix_schema(value)
        elif key == "items" and isinstance(value, list):
            out[key] = [fix_schema(sub) for sub in value]
        else:
            out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def normalize_tool(tool: Any, keep_dots: bool) -> tuple[str, dict[str, Any]]:
    """A tool in any of the seen shapes -> (original name, OpenAI tool)."""
    if not isinstance(tool, dict):
        raise Drop("bad_tool_schema", "tool is not an object")
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    original = fn.get("name")
    name = sanitize_name(original, keep_dots)
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    params = fix_schema(params)
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise Drop("bad_tool_schema", f"{name}: parameters must be an object schema")
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    description = fn.get("description")
    out = {"type": "function", "function": {"name": name, "description": description if isinstance(description, str) else "", "parameters": params}}
    return original, out


ToolEntry = tuple[dict[str, Any], str, str, str]  # (tool, tool JSON, name, canonical schema JSON)


def tool_entry(tool: dict[str, Any], codec: JsonCodec = STDLIB_JSON) -> ToolEntry:
    fn = tool["function"]
    return (tool, codec.dumps(tool), fn["name"], codec.dumps_sorted(fn["parameters"]))


def tool_set(entries: list[ToolEntry]) -> ToolSet:
    if not entries:
        return NO_TOOLS
    tools, texts, names, schemas = zip(*entries)
    if len(set(names)) != len(names):
        raise Drop("invalid_name", "two tools share a (sanitised) name")
    # Same text as dumps(list_of_tools): compact separators.
    return ToolSet(tools, "[" + ",".join(texts) + "]", tuple(zip(names, schemas)))


def normalize_tools(raw_tools: Any, keep_dots: bool, codec: JsonCodec = STDLIB_JSON) -> ToolSet:
    if not isinstance(raw_tools, list):
        raise Drop("bad_tool_schema", "tool list is not a list")
    return tool_set([tool_entry(normalize_tool(t, keep_dots)[1], codec) for t in raw_tools])


# ----------------------------------------------------------------------------------------------
# Call-list parsing (ToolACE's python-like bracket lists)

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
    return {k: _whole_floats_to_int(v) for k, v in obj.items()}


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
        args[kw.arg] = _whole_floats_to_int(literal(kw.value))
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


_LOOKS_LIKE_CALLS = re.compile(r"^\s*\[\s*[^\[\]\"'(){}=,]+\(")


# ----------------------------------------------------------------------------------------------
# Parsers of repeated strings (cacheable)


_JSON = json.JSONDecoder()
_TOOLACE_AFTER_LIST = ". \nShould you decide"
_TOOLACE_TOOLS_MARK = "Here is a list of functions in JSON format that you can invoke:"


def _strip_escaped(text: str) -> str:
    # Some rows carry a literal backslash-n (two characters) where a newline was meant.
    text = text.strip()
    while text.startswith("\\n"):
        text = text[2:].lstrip()
    while text.endswith("\\n"):
        text = text[:-2].rstrip()
    return text


# "... function signatures within <tools> </tools> XML tags." describes a format we do not use.
_TAGS_IN_PROSE = re.compile(r"\s*within (?:XML tags )?<tools>\s*</tools>(?: XML tags)?")


def tag_bodies(text: str, open_tag: str, close_tag: str) -> list[str]:
    """Bodies of every complete ``open_tag ... close_tag`` pair, stripped."""
    out = []
    at = text.find(open_tag)
    while at >= 0:
        end = text.find(close_tag, at)
        if end < 0:
            break
        out.append(_strip_escaped(text[at + len(open_tag):end]))
        at = text.find(open_tag, end)
    return out


def tools_block(system: str) -> tuple[int, str] | None:
    """(start, body) of the ``<tools>`` block that holds a list or object.

    The prompt also names the tags in prose ("within <tools> </tools> XML tags") before the block.
    """
    at = system.find("<tools>")
    while at >= 0:
        end = system.find("</tools>", at)
        if end < 0:
            return None
        body = _strip_escaped(system[at + 7:end])
        if body[:1] in ("[", "{"):
            return at, body
        at = system.find("<tools>", at + 7)
    return None


def _hermes_calls(value: str, codec: JsonCodec = STDLIB_JSON) -> list[tuple[Any, Any]]:
    calls = []
    for body in tag_bodies(value, "<tool_call>", "</tool_call>"):
        try:
            obj = parse_loose(body, codec)
        except ValueError:
            raise Drop("bad_call", "unreadable <tool_call>") from None
        if not isinstance(obj, dict):
            raise Drop("bad_call", "<tool_call> is not an object")
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = parse_loose(args, codec)
            except ValueError:
                raise Drop("bad_call", "arguments string is not JSON") from None
        name = obj.get("name")
        if name is None and isinstance(args, dict) and "name" in args:
            args = dict(args)
            name = args.pop("name")
        calls.append((name, args))
    return calls


def _hermes_responses(value: str, codec: JsonCodec = STDLIB_JSON) -> list[tuple[Any, str]]:
    bodies = tag_bodies(value, "<tool_response>", "</tool_response>") or [value.strip()]
    out = []
    for body in bodies:
        try:
            obj = parse_loose(body, codec)
        except ValueError:
            out.append((None, body))
            continue
        if isinstance(obj, dict) and "name" in obj and "content" in obj:
            content = obj["content"]
            out.append((obj["name"], content if isinstance(content, str) else codec.dumps(content)))
        else:
            out.append((None, body))
    return out


def _toolace_results(value: str, codec: JsonCodec = STDLIB_JSON) -> list[tuple[Any, str]] | None:
    try:
        obj = codec.loads(value)
    except ValueError:
        return None
    if not isinstance(obj, list) or not all(isinstance(o, dict) and "name" in o for o in obj):
        return None
    return [(o["name"], codec.dumps(o.get("results"))) for o in obj]


_ELEMENT_GAP = re.compile(r"\}\s*,\s*\{")


def split_elements(text: str) -> list[str] | None:
    """Cheap split of a list of objects into element bodies (the text between each ``{`` and ``}``),
    so repeated tools are read once.

    A split inside a string leaves a piece that does not parse; callers then read the whole list.
    """
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return None
    inner = body[1:-1].strip()
    if not inner:
        return []
    if not (inner.startswith("{") and inner.endswith("}")):
        return None
    # The outer braces cannot be part of a gap, so splitting inside them gives the same pieces.
    return _ELEMENT_GAP.split(inner[1:-1])


class Parsers:
    """String parsers for repeated pieces. Results are treated as read-only by the normalizers."""

    def __init__(self, keep_dots: bool = False, cache: bool = False, fast_json: bool | None = None) -> None:
        self.keep_dots = keep_dots
        self.json = FAST_JSON if (cache if fast_json is None else fast_json) else STDLIB_JSON

        def maybe(fn: Callable[..., Any], size: int = 4096) -> Callable[..., Any]:
            # Whole prompts and call lists repeat less than tools and names: small caches for them
            # keep memory bounded on large inputs.
            return lru_cache(maxsize=size)(fn) if cache else fn

        self.cache = cache
        self.toolace_system = maybe(self._toolace_system)
        self.hermes_system = maybe(self._hermes_system)
        # Call lists and tool results are nearly all distinct (3-14% repeats on the synthetic
        # sources): there the cache's hashing and eviction cost more than its hits saved.
        self.toolace_calls = self._toolace_calls
        self.hermes_calls = partial(_hermes_calls, codec=self.json)
        self.hermes_responses = partial(_hermes_responses, codec=self.json)
        self.toolace_results = partial(_toolace_results, codec=self.json)
        self.tools_json = maybe(self._tools_json)
        self.tool_element = maybe(self._tool_element, 100_000)  # keyed by the object's body
        self.name = maybe(self._name, 100_000)
        # The prose before a <tools> block is nearly always the same few prompts.
        self.prose = maybe(self._prose, 256)

    def _tool_element(self, body: str) -> ToolEntry:
        return tool_entry(normalize_tool(parse_loose("{" + body + "}", self.json), self.keep_dots)[1], self.json)

    def _tool_list_by_pieces(self, text: str) -> ToolSet | None:
        pieces = split_elements(text) if self.cache else None
        if pieces is None:
            return None
        try:
            entries = list(map(self.tool_element, pieces))
        except ValueError:
            return None  # a piece cut inside a string: the caller reads the list as a whole
        return tool_set(entries)

    def tool_list(self, text: str) -> ToolSet:
        """A list of tools (JSON or python repr) -> OpenAI tools; each distinct tool read once."""
        fast = self._tool_list_by_pieces(text)
        if fast is not None:
            return fast
        try:
            raw = parse_loose(text, self.json)
        except ValueError:
            raise Drop("bad_tool_schema", "tool list is neither JSON nor a python literal") from None
        return normalize_tools(raw, self.keep_dots, self.json)

    def _name(self, name: Any) -> str:
        return sanitize_name(name, self.keep_dots)

    def _toolace_system(self, system: str) -> tuple[str, ToolSet]:
        at = system.find(_TOOLACE_TOOLS_MARK)
        start = system.find("[", at) if at >= 0 else -1
        if start < 0:
            raise Drop("unsupported_tool_format", "no JSON function list in the system prompt")
        # Usual layout: the list ends right before this sentence. If every piece up to it reads as a
        # JSON object, that slice is the list raw_decode would find, without decoding it whole.
        mark = system.find(_TOOLACE_AFTER_LIST, start)
        if mark > start and system[mark - 1] == "]":
            fast = self._tool_list_by_pieces(system[start:mark])
            if fast is not None:
                return system[:at].strip(), fast
        try:
            _, end = _JSON.raw_decode(system, start)
        except ValueError:
            raise Drop("unsupported_tool_format", "function list is not JSON") from None
        return system[:at].strip(), self.tool_list(system[start:end])

    def _hermes_system(self, system: str) -> tuple[str, ToolSet] | None:
        block = tools_block(system)
        if block is None:
            return None
        # The rest of the prompt teaches the XML call format, which our template replaces.
        start, body = block
        return self.prose(system[:start]), self.tool_list(body)

    @staticmethod
    def _prose(text: str) -> str:
        return _TAGS_IN_PROSE.sub("", text).strip()

    def _tools_json(self, text: str) -> ToolSet:
        return self.tool_list(text)

    def _toolace_calls(self, value: str) -> list[tuple[str, dict[str, Any]]] | None:
        if not _LOOKS_LIKE_CALLS.match(value):
            return None
        try:
            return parse_call_list(value, self.json)
        except (ValueError, SyntaxError, RecursionError):
            raise Drop("bad_call", "unreadable call list") from None


def cached_parsers(keep_dots: bool = False) -> Parsers:
    return Parsers(keep_dots=keep_dots, cache=True)


def stdlib_parsers(parsers: Parsers) -> Parsers:
    """Uncached stdlib-json twin of ``parsers``, for rows the fast codec hands back."""
    return Parsers(keep_dots=parsers.keep_dots, cache=False)


# ----------------------------------------------------------------------------------------------
# Building blocks shared by the normalizers


class _Builder:
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

    def calls(self, calls: list[tuple[Any, Any]], merge: bool = False) -> None:
        """Add an assistant call turn; ``merge`` joins it to a directly preceding call turn
        (the legacy format writes parallel calls as consecutive assistant messages)."""
        last = self.messages[-1] if self.messages else None
        if merge and last is not None and last["role"] == "assistant" and last.get("tool_calls"):
            tool_calls = last["tool_calls"]
        else:
            tool_calls = []
            self._open = []
            self.messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
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
            for at, (_, call_name) in enumerate(self._open):
                if call_name == clean:
                    break
            else:
                raise Drop("tool_result_mismatch", f"result of {name!r} answers no open call")
        placeholder, _ = self._open.pop(at)
        self.messages.append({"role": "tool", "tool_call_id": placeholder, "content": content})


def _turns(row: dict[str, Any], key: str) -> list[dict[str, Any]]:
    turns = row.get(key)
    if not isinstance(turns, list):
        raise Drop("unparseable", f"'{key}' is not a list of turns")
    for turn in turns:
        if not isinstance(turn, dict):
            raise Drop("unparseable", f"'{key}' is not a list of turns")
    return turns


# ----------------------------------------------------------------------------------------------
# Normalizers, one per kind


def normalize_hermes_fc(row: dict[str, Any], p: Parsers) -> Conversation:
    turns = _turns(row, "conversations")
    b = _Builder(p)
    tools = NO_TOOLS
    if isinstance(row.get("tools"), str) and row["tools"].strip():
        tools = p.tools_json(row["tools"])
    for i, turn in enumerate(turns):
        who, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise Drop("empty_turn", "turn value is not text")
        if who == "system":
            parsed = p.hermes_system(value) if i == 0 else None
            if parsed is not None:
                system, block_tools = parsed
                tools = tools if tools.tools else block_tools
                if system:
                    b.text("system", system)
            elif value.strip():
                b.text("system", value)
        elif who == "human":
            b.text("user", value)
        elif who == "gpt":
            if "<tool_call>" in value:
                b.calls(p.hermes_calls(value))
            else:
                b.text("assistant", value)
        elif who == "tool":
            for name, content in p.hermes_responses(value):
                b.result(name, content)
        else:
            raise Drop("role_order", f"unknown role {who!r}")
    return Conversation(b.messages, tools, b.n_calls, b.call_list)


def normalize_toolace(row: dict[str, Any], p: Parsers) -> Conversation:
    system = row.get("system")
    if not isinstance(system, str):
        raise Drop("unparseable", "system is not text")
    prompt, tools = p.toolace_system(system)
    b = _Builder(p)
    if prompt:
        b.text("system", prompt)
    for turn in _turns(row, "conversations"):
        who, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise Drop("empty_turn", "turn value is not text")
        if who == "user":
            b.text("user", value)
        elif who == "assistant":
            # Checked before the cache, so plain answers do not push call lists out of it.
            calls = p.toolace_calls(value) if _LOOKS_LIKE_CALLS.match(value) else None
            if calls is None:
                b.text("assistant", value)
            else:
                b.calls(calls)
        elif who == "tool":
            results = p.toolace_results(value)
            if results is None:
                b.result(None, value)
            else:
                for name, content in results:
                    b.result(name, content)
        else:
            raise Drop("role_order", f"unknown role {who!r}")
    return Conversation(b.messages, tools, b.n_calls, b.call_list)


def _legacy_call(value: Any, codec: JsonCodec) -> tuple[Any, Any] | None:
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = parse_loose(value, codec)
        except ValueError:
            raise Drop("bad_call", "function_call is not JSON") from None
    if not isinstance(value, dict) or "name" not in value:
        raise Drop("bad_call", "function_call has no name")
    args = value.get("arguments")
    if args is None or args == "":
        args = {}
    if isinstance(args, str):
        try:
            args = parse_loose(args, codec)
        except ValueError:
            raise Drop("bad_call", "function_call arguments are not JSON") from None
    return value["name"], args


def normalize_fc_zh_hard(row: dict[str, Any], p: Parsers) -> Conversation:
    functions = row.get("functions")
    if isinstance(functions, str):
        tools = p.tools_json(functions) if functions.strip() else NO_TOOLS
    elif isinstance(functions, list):
        tools = normalize_tools(functions, p.keep_dots, p.json)
    elif functions is None:
        tools = NO_TOOLS
    else:
        raise Drop("bad_tool_schema", "functions is neither text nor a list")
    b = _Builder(p)
    for msg in _turns(row, "conversation"):
        role, content = msg.get("role"), msg.get("content")
        if role == "system":
            if isinstance(content, str) and content.strip():
                b.text("system", content)
        elif role == "user":
            b.text("user", content)
        elif role == "assistant":
            call = _legacy_call(msg.get("function_call"), p.json)
            if call is None:
                b.text("assistant", content)
            else:
                b.calls([call], merge=True)
        elif role in ("function", "tool"):
            b.result(msg.get("name") or None, content if isinstance(content, str) else p.json.dumps(content))
        else:
            raise Drop("role_order", f"unknown role {role!r}")
    return Conversation(b.messages, tools, b.n_calls, b.call_list)


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def normalize_openhermes(row: dict[str, Any], p: Parsers) -> Conversation:
    b = _Builder(p)
    top = row.get("system_prompt")
    turns = _turns(row, "conversations")
    first_system = turns[0].get("value") if turns and turns[0].get("from") == "system" else None
    # A system turn wins over the top-level field; either may be empty or missing.
    system = first_system if isinstance(first_system, str) and first_system.strip() else top
    if isinstance(system, str) and system.strip():
        b.text("system", system)
    for i, turn in enumerate(turns):
        who, value = turn.get("from"), turn.get("value")
        if who == "system":
            if i != 0:
                raise Drop("role_order", "system turn after the start")
            continue
        if who not in _SHAREGPT_ROLES:
            raise Drop("role_order", f"unknown role {who!r}")
        b.text(_SHAREGPT_ROLES[who], value)
    return Conversation(b.messages)


def normalize_wildchat(row: dict[str, Any], p: Parsers) -> Conversation:
    if row.get("toxic") is True:
        raise Drop("toxic", "flagged toxic by the source")
    b = _Builder(p)
    for msg in _turns(row, "conversation"):
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise Drop("role_order", f"unknown role {role!r}")
        b.text(role, msg.get("content"))
    return Conversation(b.messages)


NORMALIZERS: dict[str, Callable[[dict[str, Any], Parsers], Conversation]] = {
    "hermes_fc": normalize_hermes_fc,
    "toolace": normalize_toolace,
    "fc_zh_hard": normalize_fc_zh_hard,
    "openhermes": normalize_openhermes,
    "wildchat": normalize_wildchat,
}


def finalize(conv: Conversation, codec: JsonCodec = STDLIB_JSON) -> tuple[str, str]:
    """Replace call-id placeholders with ids derived from the content; return (messages, tools) JSON.

    Ids depend on the content only, so two raw rows that normalize to the same conversation give
    byte-identical output rows (and the duplicate rule catches them).
    """
    messages_json = codec.dumps_text(conv.messages)
    tools_json = conv.tools.json
    if not conv.n_calls:
        return messages_json, tools_json
    hasher = hashlib.blake2b(messages_json.encode(), digest_size=8)
    hasher.update(tools_json.encode())  # same digest as hashing the concatenation, without the copy
    digest = hasher.hexdigest()
    # Inside JSON text a quote in content is escaped, and the closing quote ends the number, so
    # these patterns only match the real keys of that one placeholder.
    for i in range(conv.n_calls):
        new_id = f'"call_{digest}{i:03d}"'
        messages_json = (messages_json.replace(f'"id":"#{i}"', f'"id":{new_id}')
                         .replace(f'"tool_call_id":"#{i}"', f'"tool_call_id":{new_id}'))
    return messages_json, tools_json


def finalize_keyed(conv: Conversation) -> tuple[str, str, int]:
    """:func:`finalize` with the fast codec, plus the row's content key (``filter_rules.content_key``).

    Works on the UTF-8 bytes orjson writes: each text is encoded once and hashed from there,
    instead of decoding, replacing, and encoding again to hash. Raises UnicodeEncodeError for text
    that has no UTF-8 form (lone surrogates); the caller counts the row as unparseable.
    """
    try:
        messages = orjson.dumps(conv.messages)
    except TypeError:  # lone surrogates: json writes them, and encode() below refuses them
        messages = _std_dumps(conv.messages).encode()
    tools_json = conv.tools.json
    tools = tools_json.encode()
    if conv.n_calls:
        hasher = hashlib.blake2b(messages, digest_size=8)
        hasher.update(tools)
        digest = hasher.hexdigest().encode()
        for i in range(conv.n_calls):
            new_id = b'"call_%s%03d"' % (digest, i)
            messages = (messages.replace(b'"id":"#%d"' % i, b'"id":' + new_id)
                        .replace(b'"tool_call_id":"#%d"' % i, b'"tool_call_id":' + new_id))
    hasher = hashlib.blake2b(messages, digest_size=8)
    hasher.update(b"\x00")
    hasher.update(tools)
    return messages.decode(), tools_json, int.from_bytes(hasher.digest(), "little")


def read_conversation(kind: str, line: str, parsers: Parsers) -> Conversation:
    """One raw JSONL line -> its normalized :class:`Conversation`. Raises :class:`Drop`."""
    try:
        row = parsers.json.loads(line)
    except ValueError:
        raise Drop("unparseable", "line is not JSON") from None
    if not isinstance(row, dict):
        raise Drop("unparseable", "line is not a JSON object")
    return NORMALIZERS[kind](row, parsers)


def normalize_line(kind: str, line: str, parsers: Parsers) -> tuple[str, str]:
    """One raw JSONL line -> (messages JSON, tools JSON). Raises :class:`Drop` on any failure."""
    if kind not in NORMALIZERS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    try:
        return finalize(read_conversation(kind, line, parsers), parsers.json)
    except NeedsStdlibJson:
        plain = stdlib_parsers(parsers)
        return finalize(read_conversation(kind, line, plain), plain.json)
