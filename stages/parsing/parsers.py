"""One run's string parsers: the JSON codec, the tool-name rule, and caches for repeated strings.

The plain instance parses every time with the stdlib ``json`` module (the row-by-row baseline);
the cached one (:func:`cached_parsers`) parses each distinct tool, tool list and name once, and
reads/writes JSON with orjson (:data:`~stages.parsing.json_codec.FAST_JSON`): what the filter
stage uses. Both give the same values and write the same text. A kind keeps its own repeated
pieces (a system prompt holding the tool list) in the same caches through :meth:`Parsers.cached`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, TypeVar

from stages.filter_rules import Drop
from stages.parsing.json_codec import FAST_JSON, STDLIB_JSON
from stages.parsing.literals import parse_loose
from stages.parsing.tools import (
    ToolEntry,
    ToolSet,
    normalize_tool,
    normalize_tools,
    sanitize_name,
    split_elements,
    tool_entry,
    tool_set,
)

T = TypeVar("T")


class Parsers:
    """String parsers for repeated pieces. Results are treated as read-only by the normalizers."""

    def __init__(self, keep_dots: bool = False, cache: bool = False, fast_json: bool | None = None) -> None:
        self.keep_dots = keep_dots
        self.json = FAST_JSON if (cache if fast_json is None else fast_json) else STDLIB_JSON
        self.cache = cache
        self._bound: dict[Callable[..., Any], Callable[[str], Any]] = {}
        self.tools_json = self._maybe(self.tool_list)
        self.tool_element = self._maybe(self._tool_element, 100_000)  # keyed by the object's body
        self.name = self._maybe(self._name, 100_000)

    def _maybe(self, fn: Callable[..., T], size: int = 4096) -> Callable[..., T]:
        # Whole prompts and tool lists repeat less than tools and names: small caches for them keep
        # memory bounded on large inputs. Call lists and tool results are nearly all distinct
        # (3-14% repeats on the synthetic sources): there a cache costs more than its hits save,
        # so the kinds parse them directly.
        return lru_cache(maxsize=size)(fn) if self.cache else fn  # type: ignore[return-value]

    def cached(self, parse: Callable[[Parsers, str], T], size: int = 4096) -> Callable[[str], T]:
        """``parse(self, text)`` as a function of ``text``, memoized in this instance when it caches."""
        bound = self._bound.get(parse)
        if bound is None:
            bound = self._bound[parse] = self._maybe(partial(parse, self), size)
        return bound

    def drop_text_caches(self) -> None:
        """Forget the cached whole prompts and tool lists (tools and names, which other sources
        share, stay). One source's prompts rarely come back in the next one; dropped while the
        garbage collector is paused, they never cost it a pass over thousands of live entries."""
        if self.cache:
            self.tools_json.cache_clear()  # type: ignore[attr-defined]
            for bound in self._bound.values():
                bound.cache_clear()  # type: ignore[attr-defined]

    def _tool_element(self, body: str) -> ToolEntry:
        return tool_entry(normalize_tool(parse_loose("{" + body + "}", self.json), self.keep_dots), self.json)

    def tool_list_in_pieces(self, text: str) -> ToolSet | None:
        """A list of tool objects read element by element (each distinct element once), or None
        when the caller must read it whole (no cache, not a list of objects, a piece cut inside a
        string)."""
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
        fast = self.tool_list_in_pieces(text)
        if fast is not None:
            return fast
        try:
            raw = parse_loose(text, self.json)
        except ValueError:
            raise Drop("bad_tool_schema", "tool list is neither JSON nor a python literal") from None
        return normalize_tools(raw, self.keep_dots, self.json)

    def _name(self, name: Any) -> str:
        return sanitize_name(name, self.keep_dots)


def cached_parsers(keep_dots: bool = False) -> Parsers:
    return Parsers(keep_dots=keep_dots, cache=True)


def stdlib_parsers(parsers: Parsers) -> Parsers:
    """Uncached stdlib-json twin of ``parsers``, for rows the fast codec hands back."""
    return Parsers(keep_dots=parsers.keep_dots, cache=False)
