"""Stateful tool environments, one module each, and the sessions generated against them.

Each module of this package (other than ``base`` and ``sessions``) defines one
:class:`~stages.synthetic.environments.base.Environment` subclass; adding an environment means
adding one module. The registry below finds them. ``heldout = True`` environments are used only by
the development evaluation and never reach training data (the same rule as the function bank's
held-out domains). Nothing here comes from any benchmark.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from stages.synthetic.environments.base import Environment

_NOT_ENVIRONMENTS = frozenset({"base", "sessions"})


@cache
def environments() -> dict[str, type[Environment]]:
    """Every environment by name, in module order (deterministic)."""
    found: dict[str, type[Environment]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in _NOT_ENVIRONMENTS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Environment) and value is not Environment \
                    and value.__module__ == module.__name__:
                if value.name in found:
                    raise ValueError(f"two environments are named {value.name!r}")
                found[value.name] = value
    return found


def training_environments() -> list[type[Environment]]:
    return [e for e in environments().values() if not e.heldout]


def heldout_environments() -> list[type[Environment]]:
    return [e for e in environments().values() if e.heldout]
