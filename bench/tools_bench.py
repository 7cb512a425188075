"""Tokens of a tool list: the compact v2 rendering against v1's JSON lines, on the same lists.

    python -m bench tools [--rows 400] [--samples DIR] [--tokenizer smollm2|qwen2.5] [--json out.json]

The lists measured:
- ``generator``: the tools of ``--rows`` synthetic rows of each tool-offering kind, as the filter
  normalizes them (``stages/kinds``: the tools the training rows carry);
- ``sessions``: the tools of the multi-turn environment sessions (``apigen_mt``);
- ``dev_many_tools``: the development evaluation's long lists (7-10 held-out tools);
- ``samples``: real hub rows in their raw schemas (``--samples``: a folder with
  ``toolace.jsonl`` / ``hermes_function_calling_v1.jsonl``, e.g. the project's shared samples),
  normalized by the same kinds. Skipped with a line when the folder is not given.

Both renderings come from the one chat template (``toolcall/chat_template.jinja``): the tools
block is the text between ``# Tools\\n`` and the system turn's eos, tokenized with the training
tokenizer (SmolLM2's, from the embedded GGUF) or Qwen2.5's (rebuilt offline). Printed per set: the
lists, total tokens of each rendering, the ratio of the totals, and the median and worst ratio of
one list. The target is a ratio of at most 0.6.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolcall.chat_template import TOOLS_HEADER, render_chat

EOS = "<|eos|>"  # a marker that occurs in no tool text: the block ends where it starts
TARGET = 0.6
SAMPLE_FILES = {"toolace": "toolace.jsonl", "hermes_fc": "hermes_function_calling_v1.jsonl"}


def tools_block(tools: list[dict[str, Any]], tool_format: str) -> str:
    """The tools block as the template writes it for ``tool_format``."""
    text = render_chat([{"role": "user", "content": "x"}], tools, eos_token=EOS, tool_format=tool_format)
    start = text.index(TOOLS_HEADER) + len(TOOLS_HEADER) + 1
    return text[start:text.index(EOS, start)]


def _normalized_tools(kind: str, rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The OpenAI tools of each row the filter keeps (its own per-row path)."""
    from stages.filter_rules import Drop
    from stages.parsing.parsers import cached_parsers
    from stages.row_pipeline import prepare_row

    parsers = cached_parsers()
    for row in rows:
        try:
            prepared = prepare_row(kind, json.dumps(row, ensure_ascii=False), parsers)
        except Drop:
            continue
        tools = json.loads(prepared.tools)
        if tools:
            yield tools


def generator_lists(rows: int) -> Iterator[list[dict[str, Any]]]:
    from stages.synthetic.generator import iter_samples

    for kind in ("hermes_fc", "toolace", "fc_zh_hard"):
        yield from _normalized_tools(kind, (s.row for s in iter_samples(kind, rows, seed=1, malformed_fraction=0.0)))


def session_lists(rows: int) -> Iterator[list[dict[str, Any]]]:
    from stages.kinds import SOURCE_KINDS
    from stages.synthetic.generator import iter_samples

    if "apigen_mt" not in SOURCE_KINDS:
        return
    yield from _normalized_tools("apigen_mt", (s.row for s in iter_samples("apigen_mt", rows, seed=1,
                                                                            malformed_fraction=0.0)))


def dev_lists() -> Iterator[list[dict[str, Any]]]:
    from stages.evaluation.dev import build_devset

    for case in build_devset(12, 0):
        if case.category == "many_tools":
            yield case.tools


def sample_lists(folder: Path) -> Iterator[list[dict[str, Any]]]:
    for kind, name in SAMPLE_FILES.items():
        path = folder / name
        if path.is_file():
            rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            yield from _normalized_tools(kind, rows)


def measure(lists: list[list[dict[str, Any]]], count: Any) -> dict[str, Any]:
    v1 = [count(tools_block(t, "v1")) for t in lists]
    v2 = [count(tools_block(t, "v2")) for t in lists]
    ratios = [b / a for a, b in zip(v1, v2, strict=True) if a]
    return {
        "lists": len(lists),
        "tools": sum(len(t) for t in lists),
        "v1_tokens": sum(v1),
        "v2_tokens": sum(v2),
        "ratio": round(sum(v2) / sum(v1), 3) if sum(v1) else None,
        "median_list_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "worst_list_ratio": round(max(ratios), 3) if ratios else None,
        "v1_tokens_per_tool": round(sum(v1) / max(1, sum(len(t) for t in lists)), 1),
        "v2_tokens_per_tool": round(sum(v2) / max(1, sum(len(t) for t in lists)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="synthetic rows per tool-offering kind")
    parser.add_argument("--samples", type=Path, default=None, help="folder of real raw rows (hub schemas)")
    parser.add_argument("--tokenizer", choices=["smollm2", "qwen2.5"], default="smollm2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from stages.hf_assets import build_qwen25_tokenizer, load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer() if args.tokenizer == "smollm2" else build_qwen25_tokenizer()

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    sets: dict[str, list[list[dict[str, Any]]]] = {
        "generator": list(generator_lists(args.rows)),
        "sessions": list(session_lists(args.rows)),
        "dev_many_tools": list(dev_lists()),
    }
    if args.samples is not None:
        sets["samples"] = list(sample_lists(args.samples))
    else:
        print("samples: skipped (no --samples folder given)")
    results = {"tokenizer": args.tokenizer, "target_ratio": TARGET}
    for name, lists in sets.items():
        if not lists:
            print(f"{name}: no tool lists, skipped")
            continue
        r = results[name] = measure(lists, count)
        print(f"{name:15s} lists {r['lists']:5d}  tools {r['tools']:6d}  v1 {r['v1_tokens']:8d} tokens  "
              f"v2 {r['v2_tokens']:8d} tokens  ratio {r['ratio']:.3f} (median list {r['median_list_ratio']:.3f}, "
              f"worst {r['worst_list_ratio']:.3f}; per tool {r['v1_tokens_per_tool']} -> {r['v2_tokens_per_tool']})"
              f"  {'meets' if r['ratio'] <= TARGET else 'misses'} the {TARGET} target", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
