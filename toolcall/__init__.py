"""The tool-call formats: the one definition that training (``stages``) and serving (``serve``) import.

- ``tokens``: the octupus special tokens and the words that initialise their embeddings.
- ``shapes``: how an assistant turn looks in the octupus and hermes formats (``ToolCallShape``);
  the grammar (``serve.constraints``) and the parser are both built from a shape.
- ``chat_template`` (+ ``chat_template.jinja``, the only copy of the template): rendering a
  conversation the way the model is trained and prompted.
- ``parser``: generated text back to content and calls, incrementally (streaming) or at the end.
- ``arguments``: strict JSON for call arguments and their canonical (compact) bytes.
- ``messages``: OpenAI chat messages: the text of a content field, an assistant's calls, and
  messages with canonical arguments.
- ``metadata``: ``octupus.json``, the format description saved beside every edited or trained model.

Importing this package or any of its modules never imports torch (training data code imports it).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent


def source_files() -> list[Path]:
    """The files that define the format (code and template), for fingerprints of what they produce."""
    return sorted([*PACKAGE_DIR.glob("*.py"), *PACKAGE_DIR.glob("*.jinja")])
