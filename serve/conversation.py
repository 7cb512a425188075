"""The rules of a well-formed conversation, checked before anything is rendered.

Both endpoints' conversations arrive here as OpenAI chat messages (the responses endpoint converts
its input items first); what leaves is the plain form the formats render: roles system / user /
assistant / tool, content flattened to text, calls with ids.
"""

from __future__ import annotations

from typing import Any

from serve.errors import BadRequest
from toolcall.messages import ContentError, text_of


def _text(content: Any) -> str:
    try:
        return text_of(content)
    except ContentError as exc:
        raise BadRequest(str(exc), param="messages") from None


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the conversation's order and flatten content; raise BadRequest naming the problem.

    Rules: system messages only at the start; at least one user message; a tool message answers
    a call of the closest preceding assistant message, by id (the calls of one message have distinct
    ids); an assistant's calls must all be answered before the conversation goes on, and the
    conversation cannot end on unanswered calls.
    """
    out: list[dict[str, Any]] = []
    pending: set[str] = set()
    seen_other = False
    has_user = False
    for i, m in enumerate(messages):
        role = "system" if m["role"] == "developer" else m["role"]
        where = f"messages[{i}]"
        if role == "system":
            if seen_other:
                raise BadRequest(f"{where}: a system message must come before all other messages",
                                 param="messages")
            out.append({"role": "system", "content": _text(m.get("content"))})
            continue
        seen_other = True
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not call_id:
                raise BadRequest(f"{where}: a tool message needs tool_call_id", param="messages")
            if call_id not in pending:
                raise BadRequest(f"{where}: tool message answers '{call_id}', which is not a pending "
                                 "tool call of the preceding assistant message", param="messages")
            pending.discard(call_id)
            out.append({"role": "tool", "tool_call_id": call_id, "content": _text(m.get("content"))})
            continue
        if pending:
            raise BadRequest(f"{where}: tool calls {sorted(pending)} have no tool message answering them",
                             param="messages")
        if role == "user":
            has_user = True
            out.append({"role": "user", "content": _text(m.get("content"))})
        else:  # assistant
            msg: dict[str, Any] = {"role": "assistant", "content": _text(m.get("content")) or None}
            thought = m.get("reasoning_content") or m.get("reasoning")
            if thought:  # a reasoning model's earlier thinking: its template decides whether to show it
                msg["reasoning_content"] = thought
            calls = m.get("tool_calls") or []
            if calls:
                msg["tool_calls"] = []
                for c in calls:
                    if c["id"] in pending:
                        # Its tool messages could not say which of the calls they answer.
                        raise BadRequest(f"{where}: two tool calls share the id '{c['id']}'", param="messages")
                    fn = c["function"]
                    msg["tool_calls"].append({"id": c["id"], "type": "function",
                                              "function": {"name": fn["name"], "arguments": fn["arguments"]}})
                    pending.add(c["id"])
            out.append(msg)
    if pending:
        raise BadRequest(f"the conversation ends with unanswered tool calls {sorted(pending)}", param="messages")
    if not has_user:
        raise BadRequest("the conversation needs at least one user message", param="messages")
    return out
