"""The events of one generated choice: what every endpoint's answer is made from.

The core yields them as a choice is generated; a streaming endpoint turns each into its own wire
events, a non-streaming one folds them with :func:`assemble`. Both read the same stream, which is
why, for the same request and seed, streamed and plain answers agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.errors import APIError, ServerError


@dataclass
class ContentDelta:
    text: str


@dataclass
class ReasoningDelta:
    """Text of a reasoning model's thinking (always before the answer's content and calls)."""

    text: str


@dataclass
class CallStart:
    index: int
    id: str
    name: str


@dataclass
class ArgsDelta:
    index: int
    text: str


@dataclass
class Finished:
    reason: str  # stop | length | tool_calls
    completion_tokens: int
    complete_calls: int = 0  # calls 0..complete_calls-1 are complete and validated
    reasoning_tokens: int = 0  # of completion_tokens, those of the thinking block (its markers included)


@dataclass
class Failed:
    error: APIError
    completion_tokens: int


Event = ReasoningDelta | ContentDelta | CallStart | ArgsDelta | Finished | Failed


@dataclass
class CallResult:
    id: str
    name: str
    arguments: str = ""
    # False for a call cut by max_tokens or the repetition guard inside its arguments: they are the
    # cut text, never a JSON object. A complete call's arguments closed and were validated.
    complete: bool = True


@dataclass
class ChoiceResult:
    content: str | None
    calls: list[CallResult] = field(default_factory=list)
    finish_reason: str = "stop"
    completion_tokens: int = 0
    reasoning: str | None = None  # a reasoning model's thinking; None when it did not think
    reasoning_tokens: int = 0


def assemble(events: list[Event]) -> ChoiceResult:
    """Fold a choice's events into its final content and calls (raises the choice's error)."""
    content: list[str] = []
    reasoning: list[str] | None = None
    calls: dict[int, CallResult] = {}
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            reasoning = (reasoning or []) + [ev.text]
        elif isinstance(ev, ContentDelta):
            content.append(ev.text)
        elif isinstance(ev, CallStart):
            calls[ev.index] = CallResult(id=ev.id, name=ev.name)
        elif isinstance(ev, ArgsDelta):
            calls[ev.index].arguments += ev.text
        elif isinstance(ev, Failed):
            raise ev.error
        elif isinstance(ev, Finished):
            # What the stream has sent is what the answer holds: a call still open when generation
            # stopped is returned too, marked incomplete (its arguments are the cut text).
            started = [call for _, call in sorted(calls.items())]
            for i, call in enumerate(started):
                call.complete = i < ev.complete_calls
            text = "".join(content)
            return ChoiceResult(content=text if (text or not started) else None, calls=started,
                                finish_reason=ev.reason, completion_tokens=ev.completion_tokens,
                                reasoning="".join(reasoning) if reasoning is not None else None,
                                reasoning_tokens=ev.reasoning_tokens)
    raise ServerError("generation ended without a result")
