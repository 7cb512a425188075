"""The source kinds: each is one module holding what that kind is, its raw hub schema's
synthetic writer and its normalizer. This registry is the one list of kinds (the ``raw`` and
``filter`` configs, the synthetic generator and the row pipeline all read it).

- ``write``: kinds that offer tools (``offers_tools``) render a neutral synthetic case,
  ``write(rng, case) -> row`` (``stages/synthetic/cases.py``), or, for session kinds
  (``sessions``), a verified multi-turn environment session, ``write(rng, session) -> row``
  (``stages/synthetic/environments/``); chat kinds render (role, text) turns,
  ``write(rng, turns, topic, zh) -> row``. Rows are in the hub's schema, keys in its order.
- ``normalize(row, parsers) -> Conversation``: one decoded raw row to OpenAI messages and tools,
  or :class:`~stages.filter_rules.Drop` naming the rule it breaks (``stages/parsing/`` holds the
  pieces every kind shares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from stages.kinds import apigen_mt, fc_zh_hard, hermes_fc, openhermes, toolace, wildchat
from stages.parsing.conversation import Conversation
from stages.parsing.parsers import Parsers


@dataclass(frozen=True)
class SourceKind:
    """One kind's entry: its name, whether its rows carry tools, its writer and its normalizer."""

    name: str
    offers_tools: bool  # rows offer tools and carry calls (else plain chat)
    write: Callable[..., dict[str, Any]]
    normalize: Callable[[dict[str, Any], Parsers], Conversation]
    sessions: bool = False  # its writer renders a multi-turn environment session (not a case)


SOURCE_KINDS: dict[str, SourceKind] = {kind.name: kind for kind in (
    SourceKind("hermes_fc", True, hermes_fc.write, hermes_fc.normalize),
    SourceKind("toolace", True, toolace.write, toolace.normalize),
    SourceKind("fc_zh_hard", True, fc_zh_hard.write, fc_zh_hard.normalize),
    SourceKind("openhermes", False, openhermes.write, openhermes.normalize),
    SourceKind("wildchat", False, wildchat.write, wildchat.normalize),
    SourceKind("apigen_mt", True, apigen_mt.write, apigen_mt.normalize, sessions=True),
)}
KINDS = tuple(SOURCE_KINDS)
Kind = Literal[KINDS]  # type: ignore[valid-type]  # the names above, for the stages' pydantic configs
