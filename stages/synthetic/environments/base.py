"""What a stateful tool environment is: data, functions that read and change it, and requests.

An environment is a subclass of :class:`Environment` in a module of its own:

- ``initial_state(rng)``: the data (plain JSON values: dicts, lists, strings, numbers), drawn from a
  seeded random source, so the same seed gives the same world;
- functions: methods decorated with :func:`tool`, each with its JSON schema (built with the schema
  helpers below) and the phrase a user would use for what it does. A method reads and changes
  ``self.state`` and returns a JSON value; it raises :class:`ToolError` when the call cannot be
  done (an unknown id, a book that is out), which a session receives as ``{"error": ...}``. An
  optional parameter without a schema default is left out of the call: give its Python argument
  a default (``= None``);
- requests: methods named ``ask_*`` that look at the current state and return a :class:`Request`
  (or ``None`` when the state offers nothing for them): what the user says, and the plan that
  fulfils it. A plan is a generator: it yields the calls of one assistant step (several calls
  when they do not depend on each other), receives their results, may use those results in the
  next step's arguments, and returns the text that closes the turn.

Nothing here is taken from any benchmark: the domains, functions, data and names are our own.
Every function is a pure function of (state, arguments), so a session can be replayed and checked.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

Plan = Generator[list[tuple[str, dict[str, Any]]], list[Any], str]


class ToolError(Exception):
    """A call the environment cannot do; its message becomes the call's ``{"error": ...}`` result."""


# ----------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class Param:
    schema: dict[str, Any]
    required: bool = True


def _param(kind: str, description: str, optional: bool, default: Any, **keywords: Any) -> Param:
    schema: dict[str, Any] = {"type": kind, "description": description}
    schema.update({k: v for k, v in keywords.items() if v is not None})
    if default is not None:
        schema["default"] = default
    return Param(schema, required=not optional)


def string(description: str, *, enum: list[str] | None = None, optional: bool = False, default: str | None = None,
           format: str | None = None) -> Param:  # noqa: A002 - the JSON schema keyword
    return _param("string", description, optional, default, enum=enum, format=format)


def integer(description: str, *, minimum: int | None = None, maximum: int | None = None, optional: bool = False,
            default: int | None = None) -> Param:
    return _param("integer", description, optional, default, minimum=minimum, maximum=maximum)


def number(description: str, *, minimum: float | None = None, maximum: float | None = None, optional: bool = False,
           default: float | None = None) -> Param:
    return _param("number", description, optional, default, minimum=minimum, maximum=maximum)


def boolean(description: str, *, optional: bool = True, default: bool | None = None) -> Param:
    return _param("boolean", description, optional, default)


def array(description: str, items: dict[str, Any], *, optional: bool = False, min_items: int | None = None) -> Param:
    return _param("array", description, optional, None, items=items, minItems=min_items)


# ----------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class FunctionSpec:
    """One function of an environment: what a client is offered, and the method that runs it."""

    name: str
    description: str
    does: str  # what it does, in a user's words: "renew a loan" (refusals name it)
    params: tuple[tuple[str, Param], ...]
    method: str

    def parameters(self) -> dict[str, Any]:
        return {"type": "object",
                "properties": {name: dict(p.schema) for name, p in self.params},
                "required": [name for name, p in self.params if p.required]}

    def function(self) -> dict[str, Any]:
        """The function as OpenAI's ``tools[].function`` (and APIGen-MT's tools list) writes it."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters()}


def tool(description: str, does: str, **params: Param) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as a function of its environment; ``params`` in the order clients see them."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method._octupus_tool = (description, does, tuple(params.items()))  # type: ignore[attr-defined]
        return method

    return mark


@dataclass
class Request:
    """One user turn an environment can serve.

    ``text`` carries every value the plan's calls need. ``partial`` is the same request with one
    needed value left out, the assistant's question for it and the user's reply that gives it
    (``None`` when the request has no such variant).
    """

    text: str
    plan: Plan
    partial: tuple[str, str, str] | None = None


class Environment:
    """Base class; see the module docstring. Subclasses set ``name``, ``title`` and ``heldout``."""

    name: ClassVar[str]
    title: ClassVar[str]  # "Library catalog": what the system prompt calls it
    # Held-out environments are only ever seen by the development evaluation, never by training.
    heldout: ClassVar[bool] = False
    # Function-bank domains that do what this environment does (stages/synthetic/function_bank.py):
    # sessions never offer their functions beside this environment's, so an "I have no function for
    # that" answer stays true and no second tool competes for the same request.
    related_domains: ClassVar[tuple[str, ...]] = ()

    def __init__(self, seed: str) -> None:
        rng = random.Random(f"{self.name}:{seed}")
        self.state: dict[str, Any] = self.initial_state(rng)

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def functions(cls) -> tuple[FunctionSpec, ...]:
        return _functions_of(cls)

    @classmethod
    def function_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in cls.functions())

    def requests(self) -> list[Callable[[random.Random], Request | None]]:
        """The ``ask_*`` methods, in name order (so the choice among them is deterministic)."""
        return [getattr(self, n) for n in sorted(dir(type(self))) if n.startswith("ask_")]

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Run one call: arguments checked against the schema (defaults filled in), then the method.
        Raises :class:`ToolError` for an unknown function, invalid arguments or a refused call."""
        spec = {f.name: f for f in self.functions()}.get(name)
        if spec is None:
            raise ToolError(f"unknown function {name!r}")
        problem = _validator(type(self), name)(arguments)
        if problem:
            raise ToolError(f"invalid arguments for {name}: {problem}")
        values = {k: copy.deepcopy(p.schema["default"]) for k, p in spec.params
                  if k not in arguments and "default" in p.schema}
        values.update(copy.deepcopy(arguments))
        return getattr(self, spec.method)(**values)

    def snapshot(self) -> str:
        """The state as canonical JSON: equal snapshots are equal worlds."""
        return json.dumps(self.state, sort_keys=True, ensure_ascii=False)


@cache
def _functions_of(cls: type[Environment]) -> tuple[FunctionSpec, ...]:
    specs = []
    for attr in dir(cls):
        marked = getattr(getattr(cls, attr), "_octupus_tool", None)
        if marked is not None:
            description, does, params = marked
            specs.append(FunctionSpec(attr, description, does, params, attr))
    return tuple(specs)


@cache
def _validator(cls: type[Environment], name: str) -> Callable[[dict[str, Any]], str | None]:
    import jsonschema

    spec = next(f for f in cls.functions() if f.name == name)
    schema = dict(spec.parameters(), additionalProperties=False)
    checker = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())

    def check(arguments: dict[str, Any]) -> str | None:
        error = jsonschema.exceptions.best_match(checker.iter_errors(arguments))
        return None if error is None else error.message

    return check


# ----------------------------------------------------------------------------- small helpers for subclasses


def pick(rng: random.Random, items: list[Any]) -> Any:
    """``rng.choice`` that returns None for an empty list (a request that has nothing to act on)."""
    return rng.choice(items) if items else None


def quoted(text: str) -> str:
    return f"'{text}'"
