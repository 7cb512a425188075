"""Pieces the kinds' synthetic writers share.

A writer renders a neutral case (``stages/synthetic/cases.py``) or a list of chat turns in its
kind's raw hub schema, quirks included, with keys in the hub's order.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import Any

from stages.synthetic.function_bank import Function

Row = dict[str, Any]
ChatTurns = list[tuple[str, str]]  # (role "system"|"user"|"assistant", text)


# json.dumps builds a new encoder for every call with non-default options; reuse one.
dumps = json.JSONEncoder(ensure_ascii=False).encode


def _cached(cache: dict[str, str], fn: Function, render: Callable[[Function], str]) -> str:
    text = cache.get(fn.name)
    if text is None:
        text = cache[fn.name] = render(fn)
    return text


def joined(cache: dict[str, str], fns: list[Function], render: Callable[[Function], str]) -> str:
    """``render`` of each function as one list text, each function rendered once per ``cache``.

    Tool lists are most of a row's bytes and the same function is rendered thousands of times.
    ``"[" + ", ".join(items) + "]"`` is exactly what repr()/json.dumps() give for the whole list.
    """
    return "[" + ", ".join(_cached(cache, f, render) for f in fns) + "]"


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
