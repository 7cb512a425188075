"""Data card: what the filtered sets are made of, per set and per source, as DVC metrics and plots.

    python -m stages.data_card [--params params.yaml]

Reads every ``train.jsonl`` / ``validation.jsonl`` under ``data_dir`` (the filter's outputs) and
writes ``metrics_file`` (``metrics/data.json``) and the histograms under ``plots_dir``, so
``dvc metrics diff`` / ``dvc plots diff`` show what a params change did to the data.

Per row (Python, one pass; the rows are already normalized): its length in tokens as the training
tokenizer sees it (the rendered conversation with its tools, in stage 2's tool format), user turns,
tools offered, assistant answers that are text or calls, calls per call answer, and the script of
the user's text (CJK or not). Per set and source (polars): rows, token-length quantiles, means, the
shares of parallel calls, call answers and CJK rows. Histograms (CSV, one column per set): token
length, tools offered, calls per call answer.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from stages.config import (
    ConfigError,
    StrictModel,
    load_section,
    log_config,
    read_params,
    setup_logging,
    stage_argparser,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class DataCardConfig(StrictModel):
    data_dir: str
    tokenizer: str  # a model folder whose tokenizer training uses (the edited one)
    metrics_file: str
    plots_dir: str
    token_bin: int = Field(gt=0)  # width of the token-length histogram's bins
    max_tokens_bin: int = Field(gt=0)  # longer rows fall in the last bin


def row_features(row: dict[str, Any], tokenizer: Any, tool_format: str) -> dict[str, Any]:
    """The numbers one row contributes to the card."""
    from toolcall.chat_template import render_chat

    messages = json.loads(row["messages"])
    tools = json.loads(row.get("tools") or "[]")
    text = render_chat(messages, tools or None, eos_token=tokenizer.eos_token, tool_format=tool_format,
                       chat_template=tokenizer.chat_template)
    calls_per_answer = [len(m["tool_calls"]) for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
    text_answers = sum(1 for m in messages if m["role"] == "assistant" and not m.get("tool_calls"))
    user_text = " ".join(m.get("content") or "" for m in messages if m["role"] == "user" and
                         isinstance(m.get("content"), str))
    return {
        "source": row.get("source") or "unknown",
        "tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        "user_turns": sum(1 for m in messages if m["role"] == "user"),
        "tools": len(tools),
        "call_answers": len(calls_per_answer),
        "text_answers": text_answers,
        "calls": sum(calls_per_answer),
        "parallel_answers": sum(1 for n in calls_per_answer if n > 1),
        "max_calls": max(calls_per_answer, default=0),
        "cjk": bool(CJK.search(user_text)),
    }


def read_set(path: Path, tokenizer: Any, tool_format: str) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(row_features(json.loads(line), tokenizer, tool_format))
    return out


def summarize(frame: Any) -> dict[str, Any]:
    """Per set, per source and ``all``: the card's numbers (rounded, so the JSON is stable)."""
    import polars as pl

    def stats(group: pl.DataFrame) -> dict[str, Any]:
        tokens = group["tokens"]
        answers = int(group["call_answers"].sum()) + int(group["text_answers"].sum())
        call_answers = int(group["call_answers"].sum())
        return {
            "rows": group.height,
            "tokens": {"mean": round(float(tokens.mean()), 1), "p50": int(tokens.quantile(0.5, "nearest")),
                       "p90": int(tokens.quantile(0.9, "nearest")), "p99": int(tokens.quantile(0.99, "nearest")),
                       "max": int(tokens.max())},
            "user_turns_mean": round(float(group["user_turns"].mean()), 3),
            "tools_offered": {"mean": round(float(group["tools"].mean()), 3), "max": int(group["tools"].max()),
                              "rows_with_tools": int((group["tools"] > 0).sum())},
            "answers": {"text": int(group["text_answers"].sum()), "calls": call_answers,
                        "call_share": round(call_answers / answers, 4) if answers else 0.0},
            "calls_per_call_answer": round(int(group["calls"].sum()) / call_answers, 3) if call_answers else 0.0,
            "parallel_answer_share": (round(int(group["parallel_answers"].sum()) / call_answers, 4)
                                      if call_answers else 0.0),
            "cjk_row_share": round(float(group["cjk"].mean()), 4),
        }

    card: dict[str, Any] = {}
    for (name,), group in sorted(frame.group_by(["set"]), key=lambda kv: kv[0]):
        entry = {"all": stats(group)}
        for (source,), part in sorted(group.group_by(["source"]), key=lambda kv: kv[0]):
            entry[source] = stats(part)
        card[name] = entry
    return card


def histograms(frame: Any, token_bin: int, max_tokens_bin: int) -> dict[str, Any]:
    """Wide histogram tables (one column per set), as polars frames keyed by file stem."""
    import polars as pl

    sets = sorted(frame["set"].unique().to_list())
    capped = frame.with_columns(
        (pl.col("tokens").clip(upper_bound=max_tokens_bin) // token_bin * token_bin).alias("tokens_bin"))

    def wide(column: str, values: list[int]) -> pl.DataFrame:
        counts = capped.group_by(["set", column]).agg(pl.len().alias("rows"))
        table = pl.DataFrame({column: values}, schema={column: pl.Int64})
        for name in sets:
            part = counts.filter(pl.col("set") == name).select(
                pl.col(column).cast(pl.Int64), pl.col("rows").cast(pl.Int64).alias(name.replace("/", "_")))
            table = table.join(part, on=column, how="left")
        return table.fill_null(0).sort(column)

    return {
        "tokens": wide("tokens_bin", list(range(0, max_tokens_bin + 1, token_bin))).rename({"tokens_bin": "tokens"}),
        "tools_offered": wide("tools", list(range(int(frame["tools"].max()) + 1))),
        "calls_per_call_answer": wide("max_calls", list(range(int(frame["max_calls"].max()) + 1))),
    }


def run(config: DataCardConfig, tool_format: str) -> dict[str, Any]:
    import polars as pl
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    data_dir = Path(config.data_dir)
    rows: list[dict[str, Any]] = []
    for stage_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for split in SPLITS:
            path = stage_dir / f"{split}.jsonl"
            if path.is_file():
                found = read_set(path, tokenizer, tool_format)
                rows += [{**r, "set": f"{stage_dir.name}/{split}"} for r in found]
                log.info("%s: %d rows", path, len(found))
    if not rows:
        raise ConfigError(f"{data_dir}: no train.jsonl or validation.jsonl under its stage folders")
    frame = pl.DataFrame(rows)
    card = {"tool_format": tool_format, "tokenizer": config.tokenizer, "sets": summarize(frame)}
    metrics = Path(config.metrics_file)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    plots = Path(config.plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    for stem, table in histograms(frame, config.token_bin, config.max_tokens_bin).items():
        table.write_csv(plots / f"{stem}.csv")
    log.info("wrote %s and %s/*.csv", metrics, plots)
    return card


def main(argv: list[str] | None = None) -> None:
    args = stage_argparser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    config = load_section("data_card", DataCardConfig, args.params)
    # The card measures rows as stage 2 renders them: its tool format is the recipe's.
    tool_format = str((read_params(args.params).get("train_stage2") or {}).get("tool_format", "v2"))
    log_config("data_card", config)
    run(config, tool_format)


if __name__ == "__main__":
    main()
