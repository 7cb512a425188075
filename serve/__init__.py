"""OpenAI-compatible server whose tool calls are always valid: ``python -m serve --model DIR``."""
