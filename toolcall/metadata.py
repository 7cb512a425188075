"""``octupus.json``: the format description saved beside every edited and trained model.

``edit_tokenizer`` writes it (format, special tokens, eos, shape, and what the edit did); the
training stages copy it with the rendering recipe they trained on (``tool_format``); the server
reads that recipe back, because a V1 model shown V2's tools block never calls a tool.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from toolcall.chat_template import DEFAULT_TOOL_FORMAT, TOOL_FORMATS
from toolcall.shapes import OCTUPUS_SHAPE
from toolcall.tokens import SPECIAL_TOKENS

log = logging.getLogger(__name__)

METADATA_FILE = "octupus.json"


def format_metadata(eos_token: str, tool_format: str = DEFAULT_TOOL_FORMAT) -> dict[str, Any]:
    """The description of the octupus format for a tokenizer with ``eos_token``: enough to rebuild the shape."""
    if tool_format not in TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {TOOL_FORMATS}, got {tool_format!r}")
    return {
        "format": "octupus",
        "special_tokens": SPECIAL_TOKENS,
        "eos_token": eos_token,
        "tool_format": tool_format,
        "shape": {
            "text_open": OCTUPUS_SHAPE.text_open,
            "call_open": OCTUPUS_SHAPE.call_open,
            "name_close": OCTUPUS_SHAPE.name_close,
            "call_close": OCTUPUS_SHAPE.call_close,
            "call_separator": OCTUPUS_SHAPE.call_separator,
            "special_tokens": sorted(OCTUPUS_SHAPE.special_tokens),
        },
    }


def metadata_text(metadata: dict[str, Any]) -> str:
    """The bytes of ``octupus.json`` (indented, non-ASCII kept, final newline)."""
    return json.dumps(metadata, ensure_ascii=False, indent=2) + "\n"


def saved_tool_format(model_dir: str | Path) -> str:
    """The rendering (V1/V2) the model in ``model_dir`` was trained with; the default when its
    ``octupus.json`` is missing, unreadable or silent. A value that is not a recipe is an error."""
    path = Path(model_dir) / METADATA_FILE
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("tool_format", DEFAULT_TOOL_FORMAT)
    except (OSError, ValueError, AttributeError):
        return DEFAULT_TOOL_FORMAT
    if value not in TOOL_FORMATS:
        raise ValueError(f"{path}: tool_format {value!r} is not one of {TOOL_FORMATS}")
    log.info("octupus format: %s rendering (from %s)", value, path)
    return value
