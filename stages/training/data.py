"""Training rows: ``data/filtered`` lines rendered by the tokenizer's chat template, with labels.

The labels are the tokens inside the template's ``{% generation %}`` spans (what the model must
learn) and :data:`IGNORE_INDEX` elsewhere. Rows that cannot be trained on are dropped and counted
by reason, never fatal. What reaches the trainer is :meth:`TokenizedSplit.columns`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from stages.config import ConfigError
from stages.training.config import SFTStageConfig, ToolListPadding
from toolcall.arguments import ArgumentsError
from toolcall.messages import canonicalize_messages

if TYPE_CHECKING:  # heavy imports stay inside functions
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class TokenizedRow(NamedTuple):
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class TokenizedSplit:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    rows_read: int = 0
    system_prompts_dropped: int = 0
    tool_lists_padded: int = 0
    tools_added: int = 0

    def add(self, row: TokenizedRow) -> None:
        self.truncated += row.truncated
        self.input_ids.append(row.input_ids)
        self.labels.append(row.labels)

    def columns(self) -> dict[str, list[list[int]]]:
        """The dataset columns the trainer reads (one list per row)."""
        return {"input_ids": self.input_ids, "labels": self.labels}

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for t in row if t != IGNORE_INDEX) for row in self.labels)

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.input_ids)


class RowError(ValueError):
    """A data row that cannot be trained on; the reason becomes a drop counter."""


def decode_row(line: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parse one ``data/filtered`` line into (messages, tools) as plain Python lists."""
    messages, tools, _ = decode_row_with_source(line)
    return messages, tools


def decode_row_with_source(line: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """:func:`decode_row` and the row's ``source`` (None when the row does not say)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RowError("invalid_json") from exc
    if not isinstance(row, dict) or "messages" not in row:
        raise RowError("missing_messages")
    try:
        messages = json.loads(row["messages"]) if isinstance(row["messages"], str) else row["messages"]
        tools_raw = row.get("tools") or "[]"
        tools = json.loads(tools_raw) if isinstance(tools_raw, str) else tools_raw
    except json.JSONDecodeError as exc:
        raise RowError("invalid_nested_json") from exc
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RowError("messages_not_a_list")
    if not isinstance(tools, list):
        raise RowError("tools_not_a_list")
    if not any(m.get("role") == "assistant" for m in messages):
        raise RowError("no_assistant_turn")
    source = row.get("source")
    return messages, tools, source if isinstance(source, str) else None


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tool_format: str,
    max_length: int,
) -> TokenizedRow:
    """Render with the tokenizer's template; labels are the ``{% generation %}`` tokens, -100 elsewhere.

    Raises :class:`RowError` when nothing trainable is left.
    """
    try:
        # Train on the exact argument bytes the server's parser returns (compact JSON).
        messages = canonicalize_messages(messages)
    except ArgumentsError as exc:
        raise RowError("invalid_arguments") from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # tool_calls of the wrong shape
        raise RowError("invalid_tool_calls") from exc
    try:
        encoded = tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            tool_format=tool_format,
        )
    except Exception as exc:  # the template raises on malformed turns; one bad row must not stop training
        raise RowError(f"template_error:{type(exc).__name__}") from exc
    input_ids = list(encoded["input_ids"])
    mask = list(encoded["assistant_masks"])
    truncated = len(input_ids) > max_length
    input_ids, mask = input_ids[:max_length], mask[:max_length]
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(input_ids, mask, strict=True)]
    if all(label == IGNORE_INDEX for label in labels):
        raise RowError("no_trainable_tokens_within_max_length" if truncated else "no_generation_span")
    return TokenizedRow(input_ids, labels, truncated)


def _tool_name(tool: Any) -> str | None:
    """The name of a tool in OpenAI's shape (or a bare function); None when it has none."""
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    name = (function if isinstance(function, dict) else tool).get("name")
    return name if isinstance(name, str) and name else None


def tool_pool(lines: list[str]) -> list[dict[str, Any]]:
    """Every distinct tool of the rows (the first one seen under each name), sorted by name: what
    lengthened tool lists draw from. Rows that do not parse are skipped here (``read_split`` counts them)."""
    by_name: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            _, tools, _ = decode_row_with_source(line)
        except RowError:
            continue
        for tool in tools:
            name = _tool_name(tool)
            if name is not None and name not in by_name:
                by_name[name] = tool
    return [by_name[name] for name in sorted(by_name)]


_NAME_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_TEXT_WORD = re.compile(r"[a-z0-9]+")


def _name_words(name: str | None) -> set[str]:
    """The words of a tool name (snake_case, camelCase, dotted) of four letters or more, lowercased."""
    return {word.lower() for word in _NAME_WORD.findall(name or "") if len(word) >= 4}


def _user_words(messages: list[dict[str, Any]]) -> set[str]:
    return {word for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)
            for word in _TEXT_WORD.findall(m["content"].lower())}


def _calls_a_tool(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("role") == "assistant" and m.get("tool_calls") for m in messages)


def padded_tools(tools: list[dict[str, Any]], pool: list[dict[str, Any]], total: int,
                 rng: random.Random, avoid: set[str] = frozenset()) -> list[dict[str, Any]]:
    """``tools`` and tools of ``pool`` under other names, ``total`` in all (fewer when the pool runs out),
    in an order drawn from ``rng``. The row's own tools are all kept. A pool tool whose name has a
    word in ``avoid`` (the user's words) is left out: it might do what the user asked, and the
    row's answer (a text answer above all) would then be wrong."""
    names = {_tool_name(tool) for tool in tools}
    wanted = total - len(tools)
    if wanted <= 0:
        return list(tools)
    # A sample larger than needed, then unfit names left out: no pass over the pool.
    drawn = rng.sample(range(len(pool)), min(len(pool), 2 * wanted + len(names) + 8))
    extra = [pool[i] for i in drawn
             if _tool_name(pool[i]) not in names and not _name_words(_tool_name(pool[i])) & avoid][:wanted]
    merged = [*tools, *extra]
    rng.shuffle(merged)
    return merged


def _fitting_padded_row(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
                        tools: list[dict[str, Any]], longer: list[dict[str, Any]], tool_format: str,
                        limit: int) -> tuple[TokenizedRow | None, int]:
    """The row rendered with ``longer`` (``tools`` plus added ones, in its order), halving the added
    tools until the row fits ``limit`` untruncated; (None, 0) when not even one fits."""
    own = {_tool_name(tool) for tool in tools}
    is_own = [_tool_name(tool) in own for tool in longer]
    added = [i for i, mine in enumerate(is_own) if not mine]
    while added:
        keep = set(added)
        try:
            padded = tokenize_conversation(tokenizer, messages,
                                           [tool for i, tool in enumerate(longer) if is_own[i] or i in keep],
                                           tool_format, limit)
        except RowError:  # the added tools pushed every target past the limit
            padded = None
        if padded is not None and not padded.truncated:
            return padded, len(added)
        added = added[:len(added) // 2]
    return None, 0


def read_split(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    tool_format: str,
    max_length: int,
    max_rows: int | None,
    seed: int,
    drop_system_prompt: float = 0.0,
    max_length_by_source: dict[str, int] | None = None,
    pad_tool_lists: ToolListPadding | None = None,
) -> TokenizedSplit:
    """Tokenize one split; a random subset of ``max_rows`` rows (fixed by ``seed``) when given.
    A row is truncated at ``max_length``, or at its source's length in ``max_length_by_source``.

    ``drop_system_prompt``: each row that offers tools loses its leading system message with this
    probability (drawn per row, in file order, from ``seed``).

    ``pad_tool_lists``: a row that offers tools (and calls one, unless ``answers`` is ``any``) gets,
    with probability ``share``, a tool list of ``tools`` [min, max] entries: its own tools and others
    drawn from every row of the file (by name; none whose name shares a word with the user's
    messages), shuffled. A lengthened row longer than its length limit is rendered again with half the
    added tools, down to none, so padding never truncates a row. Each row's draws come from streams
    of their own, so the other choices do not move with ``share``."""
    from tqdm.auto import tqdm

    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    split = TokenizedSplit(rows_read=len(lines))
    padding = pad_tool_lists if pad_tool_lists is not None and pad_tool_lists.share > 0 else None
    pool = tool_pool(lines) if padding is not None else []
    if max_rows is not None and max_rows < len(lines):
        lines = random.Random(seed).sample(lines, max_rows)
    dropper = random.Random(f"drop_system:{seed}")
    padder = random.Random(f"pad_tools:{seed}")
    for line in tqdm(lines, desc=f"tokenizing {path}", unit="row", mininterval=2.0):
        drop = dropper.random() < drop_system_prompt
        pad_total = 0
        if padding is not None and padder.random() < padding.share:
            pad_total = padder.randint(*padding.tools)
        try:
            messages, tools, source = decode_row_with_source(line)
            if drop and tools and messages[0].get("role") == "system" and len(messages) > 1:
                messages = messages[1:]
                split.system_prompts_dropped += 1
            limit = (max_length_by_source or {}).get(source or "", max_length)
            row = tokenize_conversation(tokenizer, messages, tools, tool_format, limit)
            if pad_total > len(tools) and tools and not row.truncated and (
                    padding.answers == "any" or _calls_a_tool(messages)):
                longer = padded_tools(tools, pool, pad_total, padder, _user_words(messages))
                padded, added = _fitting_padded_row(tokenizer, messages, tools, longer, tool_format, limit)
                if padded is not None:
                    row = padded
                    split.tool_lists_padded += 1
                    split.tools_added += added
        except RowError as exc:
            split.dropped[str(exc)] += 1
            continue
        split.add(row)
    log.info(
        "%s: %d rows read, %d used (%d truncated to %d tokens), dropped %s; %d tokens, %d trained%s",
        path,
        split.rows_read,
        len(split.input_ids),
        split.truncated,
        max_length,
        dict(split.dropped) or "none",
        split.tokens,
        split.trained_tokens,
        f"; {split.tool_lists_padded} tool lists lengthened by {split.tools_added} tools" if padding else "",
    )
    return split


def read_stage_splits(
    config: SFTStageConfig, tokenizer: PreTrainedTokenizerBase, tool_format: str
) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """The stage's training split and its validation split (None when off, missing or empty)."""
    data_dir = Path(config.data_dir)
    train_path, eval_path = data_dir / "train.jsonl", data_dir / "validation.jsonl"
    if not train_path.is_file():
        raise ConfigError(f"training data not found: {train_path}")
    train_split = read_split(train_path, tokenizer, tool_format, config.max_length, config.max_train_rows, config.seed,
                             config.drop_system_prompt, config.max_length_by_source, config.pad_tool_lists)
    if not train_split.input_ids:
        raise ConfigError(f"{train_path}: no usable rows (dropped: {dict(train_split.dropped)})")
    eval_split = None
    if config.max_eval_rows != 0 and eval_path.is_file():
        eval_split = read_split(eval_path, tokenizer, tool_format, config.max_length, config.max_eval_rows,
                                config.seed, config.drop_system_prompt, config.max_length_by_source,
                                config.pad_tool_lists)
        if not eval_split.input_ids:
            eval_split = None
    return train_split, eval_split
