"""The octupus chat template (``chat_template.jinja`` beside this module, the only copy; saved with
every edited tokenizer) and renderers that need no tokenizer.

Rendered conversation (``eos`` is the tokenizer's ``eos_token``)::

    <|SYSTEM|>{system}\\n# Tools\\n{the tools}{eos}
    <|USER|>{text}{eos}
    <|ASSISTANT|><|CONTENT|>{text}{eos}
    <|ASSISTANT|><|FUNCTION_CALL|>{name}<|PARAMETERS|>{json}[<|FUNCTION_CALL|>...]{eos}
    <|FUNCTION_OUTPUT|>{name}\\n{result}{eos}

Recipes: the template variable ``tool_format`` selects ``"v2"`` (default: tools as compact
signature blocks, one line per parameter, at 0.57x the tokens of JSON lines on the generator's and
real rows' tool lists (``python -m bench tools``); one ``<|FUNCTION_OUTPUT|>`` per tool message) or
``"v1"`` (the original project's legacy recipe: each tool a JSON line; the results answering one
assistant turn merged into one ``<|FUNCTION_OUTPUT|>``). The template's header comment shows the
compact layout. Both recipes accept
OpenAI messages (``tool_calls`` / role ``tool``) and legacy ones (``function_call`` / role
``function``). An assistant message with ``tool_calls`` renders its calls only: the format has one
decision per turn, so text sent alongside calls is not part of the turn.

Passing ``tool_format`` (transformers 5.19, trl 1.16): every extra keyword of
``tokenizer.apply_chat_template(messages, tools=..., tool_format="v1", ...)`` reaches the template.
trl's ``SFTTrainer`` merges a per-row dataset column ``chat_template_kwargs`` (a dict, e.g.
``{"tool_format": "v1"}``) into its ``apply_chat_template`` call; ``SFTConfig`` has no field for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolcall.messages import assistant_calls, text_of
from toolcall.shapes import OCTUPUS_SHAPE
from toolcall.tokens import CONTENT

TOOL_FORMATS = ("v1", "v2")
DEFAULT_TOOL_FORMAT = "v2"
TOOLS_HEADER = "# Tools"

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
CHAT_TEMPLATE: str = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def render_assistant(message: Mapping[str, Any], eos_token: str = "") -> str:
    """The text the template emits for one assistant message after ``<|ASSISTANT|>``.

    This is exactly the template's generation span (pass the tokenizer's ``eos_token``). Arguments
    given as dicts render compact; strings render verbatim (see
    :func:`toolcall.messages.canonicalize_messages`).
    """
    calls = assistant_calls(message)
    if not calls:
        return f"{CONTENT}{text_of(message.get('content'))}{eos_token}"
    parts = []
    for name, arguments in calls:
        if arguments is None:
            rendered = "{}"
        elif isinstance(arguments, str):
            rendered = arguments
        else:
            rendered = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        parts.append(OCTUPUS_SHAPE.render_call(name, rendered))
    return OCTUPUS_SHAPE.call_separator.join(parts) + eos_token


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    eos_token: str,
    tool_format: str = DEFAULT_TOOL_FORMAT,
    add_generation_prompt: bool = False,
    chat_template: str | None = None,
) -> str:
    """Render with the project template without a tokenizer (transformers' own Jinja environment,
    so the result is what ``apply_chat_template(tokenize=False)`` returns)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[list(messages)],
        tools=list(tools) if tools else None,
        chat_template=chat_template or CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        eos_token=eos_token,
        tool_format=tool_format,
    )
    return rendered[0]
