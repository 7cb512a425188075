"""Stage ``edit_tokenizer``: models/base -> models/edited, ready for the octupus tool-call format.

    python -m stages.edit_tokenizer [--params params.yaml]

- adds the format's special tokens (``toolcall.tokens.SPECIAL_TOKENS``) as special tokens
  (transformers 5: ``extra_special_tokens``), so each is one id and never split;
- sets the project chat template (saved as ``chat_template.jinja`` beside the tokenizer);
- grows the embedding table only when the tokenizer outgrew it (Qwen has spare rows: they are
  used, never cut), rounded up to ``pad_to_multiple_of``;
- initialises each new input row, and each new output row when the head is untied, to the mean
  embedding of the token's descriptive words (``init_words``);
- writes ``octupus.json`` describing the format next to the model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from stages.config import StrictModel, load_section, log_config, setup_logging, stage_argparser
from stages.hf_assets import save_model_dir
from toolcall.chat_template import CHAT_TEMPLATE
from toolcall.metadata import METADATA_FILE, format_metadata, metadata_text
from toolcall.tokens import SPECIAL_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class EditTokenizerConfig(StrictModel):
    input_dir: str = Field(description="model + tokenizer to edit (the base_model stage's output)")
    output_dir: str = Field(description="where the edited model + tokenizer + template are saved")
    init_words: dict[str, str] = Field(
        description="special token -> words whose mean embedding initialises its new rows"
    )
    pad_to_multiple_of: int = Field(ge=1, description="round a grown embedding table up to this many rows")

    @field_validator("init_words")
    @classmethod
    def _covers_every_token(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [t for t in SPECIAL_TOKENS if t not in value]
        unknown = [t for t in value if t not in SPECIAL_TOKENS]
        empty = [t for t, words in value.items() if not words.strip()]
        if missing or unknown or empty:
            raise ValueError(
                f"init_words must give non-empty words for exactly {SPECIAL_TOKENS}; "
                f"missing {missing}, unknown {unknown}, empty {empty}"
            )
        return value


class EditError(RuntimeError):
    """The model/tokenizer pair cannot be edited as asked."""


def add_format_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add the special tokens that are missing and set the chat template.

    Returns token -> id for the tokens that were *new* (already present ones keep their rows, so
    editing an edited tokenizer again changes nothing).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    # Tokens already present but not special would be split by nothing yet could be normalised: make
    # them all special, and extend (not replace) whatever extra special tokens the tokenizer had.
    tokenizer.add_special_tokens({"extra_special_tokens": SPECIAL_TOKENS}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    new = {t: tokenizer.convert_tokens_to_ids(t) for t in missing}
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise EditError(f"{token} does not encode to one id after adding it: {ids}")
    return new


def row_mean(weight: Any, rows: Any, block: int = 8192) -> Any:
    """The mean of ``weight[rows]`` (a row index list, or a ``range``), as ``weight``'s dtype.

    Summed in float64 by numpy, block after block in a fixed order: the same bits whatever the
    thread count (torch's parallel reductions add in an order that depends on it), and never the
    whole table in float64 at once.
    """
    import numpy as np
    import torch

    total = np.zeros(weight.shape[1], dtype=np.float64)
    rows = list(rows) if not isinstance(rows, range) else rows
    with torch.no_grad():
        for start in range(0, len(rows), block):
            part = rows[start:start + block]
            index = torch.arange(part.start, part.stop) if isinstance(part, range) else torch.tensor(part)
            total += weight.index_select(0, index).detach().to(torch.float64).cpu().numpy().sum(axis=0)
    return torch.from_numpy(total / len(rows)).to(weight.dtype)


def _word_ids(tokenizer: PreTrainedTokenizerBase, words: str, limit: int) -> list[int]:
    ids = [i for i in tokenizer.encode(words, add_special_tokens=False) if i < limit]
    if not ids:
        raise EditError(f"init words {words!r} encode to no token of the original vocabulary")
    return ids


def edit_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    init_words: dict[str, str],
    pad_to_multiple_of: int = 64,
) -> dict[str, Any]:
    """Add the format tokens to ``tokenizer`` and fit ``model``'s embeddings to it (in place).

    Returns a summary (ids, table sizes, tied or not) for logs and ``octupus.json``.
    """
    import torch

    old_len = len(tokenizer)
    rows_before = model.get_input_embeddings().weight.shape[0]
    if old_len > rows_before:
        raise EditError(f"tokenizer has {old_len} tokens but the model only {rows_before} embedding rows")
    new_ids = add_format_tokens(tokenizer)
    needed = len(tokenizer)
    if needed > rows_before:
        # New rows are set below, every one of them: transformers' mean_resizing would draw them
        # from a random normal (unseeded), so two runs would save different files.
        model.resize_token_embeddings(needed, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    rows_after = model.get_input_embeddings().weight.shape[0]
    if rows_after < rows_before:  # guard: a resize must never drop trained rows
        raise EditError(f"embedding table shrank from {rows_before} to {rows_after}")

    inp = model.get_input_embeddings().weight
    out_module = model.get_output_embeddings()
    out = out_module.weight if out_module is not None else None
    tied = out is None or out.data_ptr() == inp.data_ptr()
    tables = [inp] if tied else [inp, out]
    with torch.no_grad():
        # Rows the table grew by (spare padding rows, and new tokens until set from their words)
        # start at the mean of the existing rows: what mean_resizing centres its draw on.
        if rows_after > rows_before:
            for table in tables:
                table[rows_before:] = row_mean(table, range(rows_before))
        for token, tid in new_ids.items():
            ids = _word_ids(tokenizer, init_words[token], old_len)
            for table in tables:
                table[tid] = row_mean(table, ids)
    if tied:
        model.tie_weights()

    # The turn ends with eos in this format: generation must stop there and padding may reuse it.
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # GGUF tokenizers come with an "unlimited" model_max_length; the real limit is the context.
    context = getattr(model.config, "max_position_embeddings", None)
    if context and (tokenizer.model_max_length is None or tokenizer.model_max_length > context):
        tokenizer.model_max_length = context

    summary = {
        "token_ids": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        "initialised": sorted(new_ids, key=SPECIAL_TOKENS.index),
        "tokenizer_size": {"before": old_len, "after": len(tokenizer)},
        "embedding_rows": {"before": rows_before, "after": rows_after},
        "tied_embeddings": tied,
        "init_words": init_words,
    }
    log.info("edited: %s", json.dumps(summary, ensure_ascii=False))
    return summary


def save_edited(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path,
                summary: dict[str, Any]) -> None:
    meta = format_metadata(tokenizer.eos_token) | {"edit": summary}
    meta.pop("tool_format")  # chosen per training run (train_stage2.tool_format), not by the model
    save_model_dir(model, tokenizer, output_dir,
                   {METADATA_FILE: metadata_text(meta)})


def run(config: EditTokenizerConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, dst = Path(config.input_dir), Path(config.output_dir)
    if not (src / "config.json").is_file():
        raise EditError(f"{src} has no config.json: run the base_model stage first")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src)
    # dtype "auto": keep the stored precision, so editing adds no rounding of its own.
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    summary = edit_model(model, tokenizer, config.init_words, config.pad_to_multiple_of)
    save_edited(model, tokenizer, dst, summary)
    log.info("edit_tokenizer: wrote %s in %.1f s", dst, time.perf_counter() - start)
    return summary


def main(argv: list[str] | None = None) -> None:
    args = stage_argparser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    config = load_section("edit_tokenizer", EditTokenizerConfig, args.params)
    log_config("edit_tokenizer", config)
    run(config)


if __name__ == "__main__":
    main()
