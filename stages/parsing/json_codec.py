"""The JSON codecs the normalizers read and write with: stdlib ``json`` and orjson, same results.

The plain codec (:data:`STDLIB_JSON`) is the row-by-row baseline; the fast one (:data:`FAST_JSON`)
reads and writes with orjson where that gives exactly what ``json`` gives, and falls back to
``json`` (or raises :class:`NeedsStdlibJson`) where it might not. Both write compact JSON (``","``
and ``":"`` separators, non-ASCII kept), the byte form ``toolcall.arguments`` uses for
arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from toolcall.arguments import loads_strict


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
    # NaN/Infinity are not JSON (python's ast would not accept them as literals either).
    return loads_strict(text)


def _fast_loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity, lone surrogates and depth > 1024, which json accepts; json
        # also gives the error when both refuse. orjson accepts nothing json refuses. Bytes are
        # decoded strictly first (json.loads(bytes) would let UTF-8-encoded surrogates through):
        # orjson reads UTF-8 bytes exactly as their text.
        return json.loads(text.decode() if isinstance(text, bytes) else text)


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
    # find(), not `in`: on bytes, `in` first tries the operand as an integer and pays for the
    # TypeError it raises (CPython 3.11), which made these checks most of this function's time.
    if out.find(b"e+") >= 0:
        raise NeedsStdlibJson("float of 1e16 or more")
    if out.find(b"null") >= 0 or out.find(b"e-") >= 0 or out.find(b"0.0000") >= 0:
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


# orjson reads integers of 19 digits or more as floats when they pass 64 bits; json keeps them exact.
_LONG_NUMBER = re.compile(r"\d{19}")


def arguments_value(arguments_json: str) -> Any:
    """The value of an arguments JSON text, exactly as ``json.loads`` reads it (orjson when that is safe)."""
    if _LONG_NUMBER.search(arguments_json) is None:
        try:
            return orjson.loads(arguments_json)
        except orjson.JSONDecodeError:
            pass  # NaN/Infinity, lone surrogates: json's reading (or its error)
    return json.loads(arguments_json)
