"""The octupus format's special tokens (kept from the original project, so its checkpoints and
grammar carry over) and the words whose mean embedding initialises each new row."""

from __future__ import annotations

from collections.abc import Sequence

SYSTEM = "<|SYSTEM|>"
USER = "<|USER|>"
ASSISTANT = "<|ASSISTANT|>"
FUNCTION_CALL = "<|FUNCTION_CALL|>"
PARAMETERS = "<|PARAMETERS|>"
FUNCTION_OUTPUT = "<|FUNCTION_OUTPUT|>"
CONTENT = "<|CONTENT|>"

# Order is part of the format: edited tokenizers append them in this order.
SPECIAL_TOKENS: list[str] = [SYSTEM, USER, ASSISTANT, FUNCTION_CALL, PARAMETERS, FUNCTION_OUTPUT, CONTENT]

# The original project's initialisation words; a new row starts as the mean embedding of the
# words' tokens, so the untrained model already "knows" roughly what each marker means.
EMBEDDING_INIT_WORDS: dict[str, str] = {
    SYSTEM: "system",
    USER: "user",
    ASSISTANT: "assistant",
    FUNCTION_CALL: "tool call",
    PARAMETERS: "arguments",
    FUNCTION_OUTPUT: "tool response",
    CONTENT: "content",
}

# End-of-turn strings of the tokenizers this project ships with (Qwen2.5, SmolLM2, tiny BPE).
KNOWN_EOS_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_end|>", "</s>")


def reserved_marker_in(text: str, eos_tokens: Sequence[str] = KNOWN_EOS_TOKENS) -> str | None:
    """The first format marker or eos string found in ``text`` (data text must contain none: it
    would render as a control token and end or split a turn), else None. For data filters."""
    for marker in (*SPECIAL_TOKENS, *eos_tokens):
        if marker in text:
            return marker
    return None
