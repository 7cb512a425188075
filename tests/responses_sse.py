"""Reading a streamed Responses answer in the tests: the raw SSE events, checked against the openai
SDK's own event types, and responses compared without their per-request ids."""

from __future__ import annotations

import copy
import json
import typing
from typing import Any

import httpx

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def sdk_event_types() -> dict[str, Any]:
    """The openai SDK's model class of each Responses stream event, by its ``type``."""
    from openai.types.responses import ResponseStreamEvent

    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    return {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(union)}


def stream_events(base: str, body: dict[str, Any], path: str = "/v1/responses") -> list[dict[str, Any]]:
    """POST a streaming Responses request; every event, each checked against the SDK's types."""
    types = sdk_event_types()
    events = []
    with httpx.stream("POST", base + path, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name, (name, event["type"])
                types[event["type"]].model_validate(event)  # the SDK's pydantic model of that event type
                events.append(event)
                name = None
    check_sequence(events)
    return events


def check_sequence(events: list[dict[str, Any]]) -> None:
    """OpenAI's order: created, in_progress, items opened and closed in turn, one terminal event."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in TERMINAL
    assert not any(e["type"] in TERMINAL for e in events[:-1])
    rid = events[0]["response"]["id"]
    assert all(e["response"]["id"] == rid for e in events if "response" in e)
    opened: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    for e in events[2:-1]:
        index = e.get("output_index")
        if e["type"] == "response.output_item.added":
            assert index == len(opened) and all(i in done for i in opened), "an item opened before the last closed"
            opened[index] = copy.deepcopy(e["item"])
            assert e["item"]["status"] == "in_progress"
        elif e["type"] == "response.output_item.done":
            assert index in opened and index not in done
            assert e["item"]["id"] == opened[index]["id"]
            done.add(index)
        else:
            assert index in opened and index not in done, e["type"]
            assert e["item_id"] == opened[index]["id"]


def assembled(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The output items rebuilt from the deltas alone (what a client accumulates), checked against
    the items the done events and the terminal response carry."""
    items: dict[int, dict[str, Any]] = {}
    for e in events:
        t = e["type"]
        if t == "response.output_item.added":
            items[e["output_index"]] = copy.deepcopy(e["item"])
        elif t == "response.content_part.added":
            items[e["output_index"]]["content"].append(copy.deepcopy(e["part"]))
        elif t in ("response.output_text.delta", "response.reasoning_text.delta"):
            items[e["output_index"]]["content"][e["content_index"]]["text"] += e["delta"]
        elif t == "response.function_call_arguments.delta":
            items[e["output_index"]]["arguments"] += e["delta"]
        elif t in ("response.output_text.done", "response.reasoning_text.done"):
            assert items[e["output_index"]]["content"][e["content_index"]]["text"] == e["text"]
        elif t == "response.function_call_arguments.done":
            assert items[e["output_index"]]["arguments"] == e["arguments"]
        elif t == "response.output_item.done":
            item = items[e["output_index"]]
            item["status"] = e["item"]["status"]
            assert item == e["item"]
    final = events[-1]["response"]
    assert [items[i] for i in sorted(items)] == final["output"] or final["status"] == "failed"
    return final


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    """A response without what differs between two requests (ids, creation time)."""
    out = {k: v for k, v in response.items() if k not in ("id", "created_at")}
    out["output"] = [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in response["output"]]
    return out
