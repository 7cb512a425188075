"""teknium/OpenHermes-2.5: its synthetic writer and its normalizer.

Raw schema: ShareGPT ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str, "weight"}],
...}`` with top-level keys that vary by row (the union has 16 columns, mostly null). The system
prompt is a ``system`` turn (possibly empty) and/or the top-level ``system_prompt`` field. No tools.
"""

from __future__ import annotations

import random
from typing import Any

from stages.filter_rules import Drop
from stages.kinds.writing import ChatTurns, Row, random_uuid
from stages.parsing.conversation import Conversation, ConversationBuilder, turns_of
from stages.parsing.parsers import Parsers

# --------------------------------------------------------------------------- synthetic writer

OPENHERMES_COLUMNS = ("custom_instruction", "topic", "model_name", "model", "skip_prompt_formatting", "category",
                      "conversations", "views", "language", "id", "title", "idx", "hash", "avatarUrl",
                      "system_prompt", "source")
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are an AI assistant. Answer accurately and show your reasoning.",
                  "You are a patient tutor who explains each step."]


def write(rng: random.Random, turns: ChatTurns, topic: str, zh: bool) -> Row:
    """A chat row; ``zh`` is not used (the synthetic OpenHermes rows are English)."""
    system_text = rng.choice(SYSTEM_PROMPTS)
    layout = rng.choice(["none", "empty_turn", "turn", "field", "both"])
    conv: list[Row] = []
    if layout in ("empty_turn", "turn", "both"):
        conv.append({"from": "system", "value": "" if layout == "empty_turn" else system_text, "weight": None})
    for role, text in turns:
        conv.append({"from": "human" if role == "user" else "gpt", "value": text,
                     "weight": (1.0 if role == "assistant" and rng.random() < 0.5 else None)})
    profile = rng.randrange(3)
    if profile == 0:  # a row that came through with every column of the union, mostly null
        row: Row = {c: None for c in OPENHERMES_COLUMNS}
        row.update(conversations=conv, source=f"synthetic-{topic}", category=topic,
                   skip_prompt_formatting=False)
    elif profile == 1:
        row = {"conversations": conv, "source": f"synthetic-{topic}", "category": topic}
    else:
        row = {"conversations": conv, "source": f"synthetic-{topic}", "topic": topic.replace("_", " ").title(),
               "idx": random_uuid(rng)}
    if layout in ("field", "both"):
        row["system_prompt"] = system_text
    return row


# --------------------------------------------------------------------------- normalizer

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def normalize(row: dict[str, Any], p: Parsers) -> Conversation:
    b = ConversationBuilder(p)
    top = row.get("system_prompt")
    turns = turns_of(row, "conversations")
    first_system = turns[0].get("value") if turns and turns[0].get("from") == "system" else None
    # A system turn wins over the top-level field; either may be empty or missing.
    system = first_system if isinstance(first_system, str) and first_system.strip() else top
    if isinstance(system, str) and system.strip():
        b.text("system", system)
    for i, turn in enumerate(turns):
        who, value = turn.get("from"), turn.get("value")
        if who == "system":
            if i != 0:
                raise Drop("role_order", "system turn after the start")
            continue
        if who not in _SHAREGPT_ROLES:
            raise Drop("role_order", f"unknown role {who!r}")
        b.text(_SHAREGPT_ROLES[who], value)
    return b.conversation()
