"""Generated text back to content and calls: the one parser, used by the server while it streams
and at the end, and by the tests that check the template round trip.

It reads a turn against a :class:`toolcall.shapes.ToolCallShape`, the same description the grammar
is compiled from. Arguments come back as the text the model wrote (the grammar made them JSON; the
server validates them against the tool's schema with :mod:`toolcall.arguments`); nothing is ever
evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolcall.arguments import JSON_WHITESPACE, json_object_end
from toolcall.shapes import ToolCallShape


@dataclass
class ParsedCall:
    name: str | None  # None while the name is still being generated
    arguments: str  # arguments text seen so far (streaming holds back a possible terminator)
    complete: bool


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)

    @property
    def complete_calls(self) -> list[ParsedCall]:
        return [c for c in self.calls if c.complete and c.name is not None]


def held_prefix(text: str, terminator: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``terminator``."""
    for n in range(min(len(text), len(terminator) - 1), 0, -1):
        if terminator.startswith(text[-n:]):
            return n
    return 0


def parse_turn(shape: ToolCallShape, text: str, finished: bool) -> ParsedOutput:
    """Parse generated text (special tokens kept, end-of-turn token removed) against ``shape``.

    ``finished`` means generation ended on its own (end-of-turn token or grammar end); only then
    can a call without a closing marker count as complete. Before that, any suffix that could be
    the start of a marker is held back so that streamed deltas never have to be retracted.
    """
    open_ = shape.call_open
    if not text.startswith(open_):
        if not finished and open_.startswith(text):
            return ParsedOutput(content=None)  # undecided: could still become a call
        if shape.text_open:
            if text.startswith(shape.text_open):
                return ParsedOutput(content=text[len(shape.text_open):])
            if not finished and shape.text_open.startswith(text):
                return ParsedOutput(content=None)
        return ParsedOutput(content=text)

    calls: list[ParsedCall] = []
    pos = 0
    while text.startswith(open_, pos):
        name_start = pos + len(open_)
        name_end = text.find(shape.name_close, name_start)
        if name_end < 0:
            calls.append(ParsedCall(name=None, arguments="", complete=False))
            break
        name = text[name_start:name_end]
        args_start = name_end + len(shape.name_close)
        end = json_object_end(text, args_start)
        following = _after_closed_arguments(shape, text, end, finished) if end is not None else None
        if following is not None:
            # The arguments object closed, followed by the call's end, the next call, or the end of
            # the text so far: a complete call, whether or not its end-of-call marker was generated.
            calls.append(ParsedCall(name=name, arguments=text[args_start:end], complete=True))
            if following < 0:
                break
            pos = following
            continue
        # Not closed (still being generated, or cut), or followed by something no grammar allows:
        # the arguments run to the next marker, and validation judges them.
        call, pos = _delimited_call(shape, text, name, args_start, finished)
        calls.append(call)
        if pos < 0:
            break
    return ParsedOutput(content=None, calls=calls)


def parse_text_turn(shape: ToolCallShape, text: str, finished: bool) -> ParsedOutput:
    """A turn whose grammar allowed text only (no tools, or ``tool_choice`` none): all of it is
    content, after the text marker when the shape has one (held back while it is being generated)."""
    opener = shape.text_open
    if opener and text.startswith(opener):
        text = text[len(opener):]
    elif opener and opener.startswith(text) and not finished:
        text = ""
    return ParsedOutput(content=text)


def _after_closed_arguments(shape: ToolCallShape, text: str, end: int, finished: bool) -> int | None:
    """After arguments closing at ``end``: where the next call starts, -1 when no next call follows
    (the text ends, possibly inside the end-of-call marker or the separator), or None when what
    follows is neither (an engine fault, left to validation)."""
    pos = end
    while pos < len(text) and text[pos] in JSON_WHITESPACE:
        pos += 1
    rest = text[pos:]
    tail = shape.call_close + shape.call_separator + shape.call_open
    if not rest or (not finished and tail.startswith(rest)):
        return -1
    if rest.startswith(tail):
        return pos + len(shape.call_close) + len(shape.call_separator)
    if shape.call_close and rest == shape.call_close:
        return -1
    return None


def _delimited_call(shape: ToolCallShape, text: str, name: str, args_start: int,
                    finished: bool) -> tuple[ParsedCall, int]:
    """A call whose arguments are not one closed object followed by a marker: they run to the
    end-of-call marker or the next call. Returns the call and where the next call starts (-1: none)."""
    open_ = shape.call_open
    if shape.call_close:
        close = text.find(shape.call_close, args_start)
        if close >= 0:
            nxt = close + len(shape.call_close)
            more = text.startswith(shape.call_separator + open_, nxt)
            return (ParsedCall(name=name, arguments=text[args_start:close], complete=True),
                    nxt + len(shape.call_separator) if more else -1)
        rest = text[args_start:]
        rest = rest[: len(rest) - held_prefix(rest, shape.call_close)]
        return ParsedCall(name=name, arguments=rest, complete=False), -1
    next_call = shape.call_separator + open_
    nxt = text.find(next_call, args_start)
    if nxt >= 0:
        return ParsedCall(name=name, arguments=text[args_start:nxt], complete=True), nxt + len(shape.call_separator)
    rest = text[args_start:]
    if not finished:
        rest = rest[: len(rest) - held_prefix(rest, next_call)]
    return ParsedCall(name=name, arguments=rest, complete=finished), -1
