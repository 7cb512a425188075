"""allenai/WildChat(-1M): its synthetic writer and its normalizer.

Raw schema: ``{"conversation_hash", "model", "timestamp", "conversation": [{"content", "role":
"user"|"assistant", "country", "hashed_ip", "header", "language", "redacted", "state",
"timestamp", "toxic", "turn_identifier"}], "turn", "language", "openai_moderation",
"detoxify_moderation", "toxic", "redacted", "state", "country", "hashed_ip", "header"}``.
Rows flagged ``toxic`` by the source are dropped. No tools.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from stages.filter_rules import Drop
from stages.kinds.writing import ChatTurns, Row
from stages.parsing.conversation import Conversation, ConversationBuilder, turns_of
from stages.parsing.parsers import Parsers

# --------------------------------------------------------------------------- synthetic writer

MODERATION_KEYS = ("harassment", "harassment/threatening", "harassment_threatening", "hate", "hate/threatening",
                   "hate_threatening", "self-harm", "self-harm/instructions", "self-harm/intent", "self_harm",
                   "self_harm_instructions", "self_harm_intent", "sexual", "sexual/minors", "sexual_minors",
                   "violence", "violence/graphic", "violence_graphic")
DETOXIFY_KEYS = ("identity_attack", "insult", "obscene", "severe_toxicity", "sexual_explicit", "threat", "toxicity")
WILDCHAT_MODELS = ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613", "gpt-4-0314", "gpt-4-1106-preview")
GEO = [("United States", "California"), ("Germany", "Bavaria"), ("China", "Guangdong"), ("India", "Karnataka"),
       ("Brazil", "São Paulo"), ("Canada", "Ontario"), ("France", "Île-de-France")]
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0 Safari/537.36",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 13_3) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/16.4 Safari/605.1.15",
          "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/113.0"]


_NOT_FLAGGED = {k: False for k in MODERATION_KEYS}


def _score_pool(seed: int, keys: tuple[str, ...], scale: float) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{k: round(rng.random() * scale, 8) for k in keys} for _ in range(256)]


# Benign chat scores near zero, drawn from fixed pools: per-key draws for every message were
# most of this kind's generation time.
_OPENAI_SCORES = _score_pool(1, MODERATION_KEYS, 1e-4)
_DETOX_SCORES = _score_pool(2, DETOXIFY_KEYS, 1e-3)


def _moderation(rng: random.Random) -> tuple[Row, Row]:
    bits = rng.getrandbits(16)
    return ({"categories": dict(_NOT_FLAGGED), "category_scores": dict(_OPENAI_SCORES[bits & 0xFF]),
             "flagged": False}, dict(_DETOX_SCORES[bits >> 8]))


def write(rng: random.Random, turns: ChatTurns, topic: str, zh: bool) -> Row:
    """A chat row; ``topic`` is not used (WildChat rows carry no topic)."""
    country, state = GEO[2] if zh else rng.choice(GEO)
    hashed_ip = f"{rng.getrandbits(256):064x}"
    header = {"accept-language": "zh-CN,zh;q=0.9" if zh else "en-US,en;q=0.9", "user-agent": rng.choice(AGENTS)}
    language = "Chinese" if zh else "English"
    start = dt.datetime(2023, 4, 9, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=rng.randint(0, 400 * 86400))
    clock = start
    first_reply: str | None = None
    conv, openai_mod, detox_mod = [], [], []
    turn_id = rng.randint(10**5, 10**6)
    for role, text in turns:
        clock += dt.timedelta(seconds=rng.randint(5, 120))
        user = role == "user"
        if user:
            turn_id += rng.randint(1, 5000)
        conv.append({"content": text, "country": country if user else None, "hashed_ip": hashed_ip if user else None,
                     "header": header if user else None, "language": language, "redacted": False, "role": role,
                     "state": state if user else None, "timestamp": None if user else clock.isoformat(),
                     "toxic": False, "turn_identifier": turn_id})
        if not user and first_reply is None:
            first_reply = clock.isoformat()
        o, d = _moderation(rng)
        openai_mod.append(o)
        detox_mod.append(d)
    return {"conversation_hash": f"{rng.getrandbits(128):032x}", "model": rng.choice(WILDCHAT_MODELS),
            "timestamp": first_reply or start.isoformat(), "conversation": conv,
            "turn": sum(1 for r, _ in turns if r == "user"), "language": language,
            "openai_moderation": openai_mod, "detoxify_moderation": detox_mod, "toxic": False, "redacted": False,
            "state": state, "country": country, "hashed_ip": hashed_ip, "header": header}


# --------------------------------------------------------------------------- normalizer


def normalize(row: dict[str, Any], p: Parsers) -> Conversation:
    if row.get("toxic") is True:
        raise Drop("toxic", "flagged toxic by the source")
    b = ConversationBuilder(p)
    for msg in turns_of(row, "conversation"):
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise Drop("role_order", f"unknown role {role!r}")
        b.text(role, msg.get("content"))
    return b.conversation()
