"""The row pipeline: one raw JSONL line -> a :class:`PreparedRow`, or :class:`Drop`.

    read (the kind's normalizer) -> check (the structure rules) -> finalize (call ids, JSON) -> key

Rows are independent here: :func:`prepare_row` can run on any chunk of lines, in any process, in
any order. The table rules (schemas and arguments, each distinct one checked once across rows)
and what needs every row of a source (duplicates, the per-function cap, the split) run on the
prepared rows, in ``stages/filter.py``.

With the fast codec (:func:`~stages.parsing.parsers.cached_parsers`) a row is finalized on the
bytes orjson writes; with the plain one on text. Both give the same row and key; a row that the
fast codec cannot promise to read as ``json`` does (:class:`NeedsStdlibJson`) is read again
with the plain codec.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

from stages.filter_rules import Drop
from stages.kinds import KINDS, SOURCE_KINDS
from stages.parsing.conversation import Conversation
from stages.parsing.json_codec import FAST_JSON, STDLIB_JSON, JsonCodec, NeedsStdlibJson
from stages.parsing.parsers import Parsers, stdlib_parsers


class PreparedRow(NamedTuple):
    """A row that passed the per-row rules, ready for the table rules.

    A named tuple rather than a dataclass: one is built per raw row.
    """

    messages: str  # OpenAI messages JSON, with final call ids
    tools: str  # OpenAI tools JSON
    calls: list[tuple[str, str]]  # (sanitised name, arguments JSON) of every call, in order
    schemas: tuple[tuple[str, str], ...]  # (name, canonical schema JSON) of every offered tool
    key: int  # content key (:func:`content_key`): orders rows without depending on input order
    fixes: tuple[str, ...]  # schema defects repaired in the offered tools (stages.filter_rules.FIXES)


class EncodedRow(NamedTuple):
    """A :class:`PreparedRow` with its two texts as UTF-8 bytes: what the filter stage keeps (it
    hashes, measures and spills bytes, and never needs the texts as ``str``)."""

    messages: bytes
    tools: bytes
    calls: list[tuple[str, str]]
    schemas: tuple[tuple[str, str], ...]
    key: int
    fixes: tuple[str, ...]


def prepare_row(kind: str, line: str | bytes, parsers: Parsers) -> PreparedRow:
    """Read, check, finalize and key one raw line (text, or its UTF-8 bytes). Raises :class:`Drop`;
    any other exception means the row is unreadable (the caller counts it as ``unparseable``)."""
    try:
        conv = _read_and_check(kind, line, parsers)
    except NeedsStdlibJson:
        parsers = stdlib_parsers(parsers)
        conv = _read_and_check(kind, line, parsers)
    messages, tools, key = finalize(conv, parsers.json)
    return PreparedRow(messages, tools, conv.calls, conv.tools.schemas, key, conv.tools.fixes)


def prepare_encoded(kind: str, line: str | bytes, parsers: Parsers) -> EncodedRow:
    """:func:`prepare_row` with the texts as UTF-8 bytes (:func:`finalize_utf8`): the same row and key."""
    try:
        conv = _read_and_check(kind, line, parsers)
    except NeedsStdlibJson:
        conv = _read_and_check(kind, line, stdlib_parsers(parsers))
    messages, tools, key = finalize_utf8(conv)
    return EncodedRow(messages, tools, conv.calls, conv.tools.schemas, key, conv.tools.fixes)


def _read_and_check(kind: str, line: str | bytes, parsers: Parsers) -> Conversation:
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    conv = read_conversation(kind, line, parsers)
    check_structure(conv.messages)
    return conv


def read_conversation(kind: str, line: str | bytes, parsers: Parsers) -> Conversation:
    """One raw JSONL line (text, or UTF-8 bytes) -> its normalized :class:`Conversation`. Raises
    :class:`Drop`; bytes that are not UTF-8 are ``unparseable``."""
    try:
        if isinstance(line, bytes) and parsers.json is not FAST_JSON:
            line = line.decode()  # strict: json.loads(bytes) would let UTF-8-encoded surrogates through
        row = parsers.json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        raise Drop("unparseable", "line is not JSON") from None
    if not isinstance(row, dict):
        raise Drop("unparseable", "line is not a JSON object")
    return SOURCE_KINDS[kind].normalize(row, parsers)


def check_structure(messages: list[dict[str, Any]]) -> None:
    """Role order, non-empty turns and call/result pairing; raises :class:`Drop`.

    Per turn the checks run in this order: the role may follow the previous one (role_order),
    no calls are left unanswered (tool_result_mismatch), the turn has text (empty_turn).
    """
    open_calls = 0
    prev = None
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "tool":
            if open_calls == 0 or (prev != "assistant" and prev != "tool"):
                raise Drop("tool_result_mismatch", "tool message without a pending call")
            open_calls -= 1
            if not msg["content"].strip():
                raise Drop("empty_turn", "empty tool result")
        elif role == "user" or role == "assistant":
            if role == "user" and not (prev is None or prev == "system" or prev == "assistant"):
                raise Drop("role_order", f"user after {prev}")
            if role == "assistant" and not (prev == "user" or prev == "tool"):
                raise Drop("role_order", f"assistant after {prev}")
            if open_calls:
                raise Drop("tool_result_mismatch", "calls left unanswered before the next turn")
            tool_calls = msg.get("tool_calls") if role == "assistant" else None
            if tool_calls:
                open_calls = len(tool_calls)
            else:
                content = msg.get("content")
                if not (isinstance(content, str) and content.strip()):
                    raise Drop("empty_turn", f"empty {role} turn")
        elif role == "system":
            if i != 0:
                raise Drop("role_order", "system message after the start")
        else:
            raise Drop("role_order", f"unknown role {role!r}")
        prev = role
    # A row must end on something the model learns to produce: an answer or a call.
    if prev != "assistant":
        raise Drop("role_order", f"conversation ends on a {prev or 'nothing'} turn")


def finalize(conv: Conversation, codec: JsonCodec = STDLIB_JSON) -> tuple[str, str, int]:
    """Replace call-id placeholders with ids derived from the content; return the (messages,
    tools) JSON and the row's :func:`content_key`.

    Ids depend on the content only, so two raw rows that normalize to the same conversation give
    byte-identical output rows (and the duplicate rule catches them). Raises UnicodeEncodeError
    for text that has no UTF-8 form (lone surrogates).
    """
    if codec is FAST_JSON:
        messages, tools, key = finalize_utf8(conv)
        return messages.decode(), conv.tools.json, key
    messages_json = codec.dumps_text(conv.messages)
    tools_json = conv.tools.json
    if conv.n_calls:
        hasher = hashlib.blake2b(messages_json.encode(), digest_size=8)
        hasher.update(tools_json.encode())  # same digest as hashing the concatenation, without the copy
        digest = hasher.hexdigest()
        # Inside JSON text a quote in content is escaped, and the closing quote ends the number, so
        # these patterns only match the real keys of that one placeholder.
        for i in range(conv.n_calls):
            new_id = f'"call_{digest}{i:03d}"'
            messages_json = (messages_json.replace(f'"id":"#{i}"', f'"id":{new_id}')
                             .replace(f'"tool_call_id":"#{i}"', f'"tool_call_id":{new_id}'))
    return messages_json, tools_json, content_key(messages_json, tools_json)


def finalize_utf8(conv: Conversation) -> tuple[bytes, bytes, int]:
    """:func:`finalize` on the UTF-8 bytes orjson writes, returned as bytes: each text is encoded
    once and hashed from there, and every placeholder replaced in one pass."""
    try:
        messages = orjson.dumps(conv.messages)
    except TypeError:  # lone surrogates: json writes them, and encode() below refuses them
        messages = STDLIB_JSON.dumps_text(conv.messages).encode()
    tools = conv.tools.json.encode()
    if conv.n_calls:
        hasher = hashlib.blake2b(messages, digest_size=8)
        hasher.update(tools)
        messages = _replace_placeholders(messages, hasher.hexdigest().encode(), conv.n_calls)
    hasher = hashlib.blake2b(messages, digest_size=8)
    hasher.update(b"\x00")
    hasher.update(tools)
    return messages, tools, int.from_bytes(hasher.digest(), "little")


def _replace_placeholders(messages: bytes, digest: bytes, n_calls: int) -> bytes:
    """Each ``"id":"#<i>"`` and ``"tool_call_id":"#<i>"`` (i < n_calls) with ``"call_<digest><i in
    three digits>"``: what :func:`finalize` does with one replace per pattern, in one pass.

    In JSON text ``":"#`` is a key's closing quote, the colon and a value that starts with "#"
    (quotes inside strings are escaped), so cutting there finds every placeholder; the key before
    it and the number after it are checked as the replace patterns would match them.
    """
    new_ids = {b"%d" % i: b'":"call_%s%03d' % (digest, i) for i in range(n_calls)}
    parts = messages.split(b'":"#')
    out = [parts[0]]
    before = parts[0]
    for part in parts[1:]:
        end = part.find(b'"')
        new_id = new_ids.get(part[:end]) if end > 0 else None
        if new_id is not None and before.endswith((b'"id', b'"tool_call_id')):
            out.append(new_id)
            out.append(part[end:])
        else:
            out.append(b'":"#')
            out.append(part)
        before = part
    return b"".join(out)


def content_key(messages_json: str, tools_json: str) -> int:
    """Stable 64-bit key of a row's content: orders rows without depending on input order."""
    hasher = hashlib.blake2b(messages_json.encode(), digest_size=8)
    hasher.update(b"\x00")
    hasher.update(tools_json.encode())
    return int.from_bytes(hasher.digest(), "little")
