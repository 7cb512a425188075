"""The development evaluation: held out from training by construction, and scored as documented."""

from __future__ import annotations

import json
import random
import re

import pytest

from stages.evaluation.dev import (
    CATEGORIES,
    MANY_TOOLS,
    TEXT_CATEGORIES,
    DevCase,
    build_devset,
    decision_margins,
    margin_subset,
    score_case,
    summarize,
)
from stages.kinds import SOURCE_KINDS
from stages.synthetic.cases import CASE_TYPES, make_case, offer_more
from stages.synthetic.function_bank import BANK, HELDOUT, HELDOUT_DOMAINS, TRAIN
from stages.synthetic.generator import generate_samples
from stages.synthetic.rng import FastRandom


def test_held_out_functions_share_no_function_name_or_entity_with_training() -> None:
    train_names = {f.name for f in TRAIN.functions}
    held_names = {f.name for f in HELDOUT.functions}
    assert held_names and train_names and not train_names & held_names
    assert len(train_names) + len(held_names) == len(BANK)
    assert not {f.entity.key for f in TRAIN.functions} & {f.entity.key for f in HELDOUT.functions}
    assert {f.domain.key for f in HELDOUT.functions} == set(HELDOUT_DOMAINS)


def _held_out_spellings() -> set[str]:
    """Every way a held-out function can be written in a raw row: its name, its words."""
    out = set()
    for f in HELDOUT.functions:
        out.add(f.name)
        out.add(" ".join(w.title() for w in [f.verb, *f.entity.key.split("_")]))
        out.add("-".join([f.verb, *f.entity.key.split("_")]))
    return out


@pytest.mark.parametrize("kind", [k for k, s in SOURCE_KINDS.items() if s.offers_tools])
def test_training_rows_never_mention_a_held_out_function(kind: str) -> None:
    spellings = _held_out_spellings()
    for sample in generate_samples(kind, 400, seed=3, malformed_fraction=0.1):
        text = json.dumps(sample.row, ensure_ascii=False)
        found = [s for s in spellings if s in text]
        assert not found, (kind, found[:3])


def test_the_spelling_check_finds_held_out_functions_when_they_are_there() -> None:
    from stages.kinds.hermes_fc import write as write_hermes
    from stages.kinds.toolace import write as write_toolace

    rng = FastRandom("control")
    spellings = _held_out_spellings()
    for write in (write_hermes, write_toolace):
        case = make_case(rng, "single", False, 1.0, bank=HELDOUT)
        text = json.dumps(write(rng, case), ensure_ascii=False)
        assert any(re.search(rf"(?<![\w.]){re.escape(s)}(?![\w])", text) for s in spellings)


def test_training_cases_draw_only_from_the_training_bank() -> None:
    rng = FastRandom("t")
    allowed = set(TRAIN.functions)
    for case_type in CASE_TYPES:
        for _ in range(30):
            case = make_case(rng, case_type, False, 1.0)
            assert set(case.tools) <= allowed
            assert all(c.name in {f.name for f in allowed} for t in case.turns for c in t.calls)


def test_devset_is_deterministic_balanced_and_held_out() -> None:
    cases = build_devset(4, seed=1)
    again = build_devset(4, seed=1)
    assert [c.to_json() for c in cases] == [c.to_json() for c in again]
    assert [c.category for c in cases] == [c for c in CATEGORIES for _ in range(4)]
    held = {f.name for f in HELDOUT.functions}
    for case in cases:
        names = {t["function"]["name"] for t in case.tools}
        assert names <= held
        assert bool(case.expected_calls) == (case.category not in TEXT_CATEGORIES)
        assert {c["name"] for c in case.expected_calls} <= names
        assert case.messages[0]["role"] == "user"  # like BFCL: no system message
    assert build_devset(4, seed=2)[0].to_json() != cases[0].to_json()
    many = [c for c in cases if c.category == "many_tools"]
    assert many and all(MANY_TOOLS[0] <= len(c.tools) <= MANY_TOOLS[1] and len(c.expected_calls) == 1
                        for c in many)


def test_a_long_tool_list_adds_distractors_that_never_do_what_an_offered_tool_does() -> None:
    """many_tools' distractors: the offered tools stay, and no added tool shares an entity with
    another tool (two tools for one thing would make the expected call ambiguous)."""
    rng = random.Random(4)
    for _ in range(100):
        base = rng.sample(HELDOUT.functions, rng.randint(1, 3))
        total = rng.randint(5, 12)
        grown = offer_more(rng, HELDOUT, base, total)
        assert len(grown) == total and all(f in grown for f in base)
        added = [f.entity.key for f in grown if f not in base]
        assert len(set(added)) == len(added)
        assert not set(added) & {f.entity.key for f in base}


def _case(category: str, expected: list[dict], shown: dict | None = None) -> DevCase:
    return DevCase("x", category, [{"role": "user", "content": "hi"}], [], expected, shown or {})


def test_scoring_of_calls_counts_names_and_exact_arguments() -> None:
    want = [{"name": "f", "arguments": {"a": 1}}, {"name": "f", "arguments": {"a": 2}}]
    case = _case("parallel", want)
    exact = score_case(case, {"content": None, "finish": "tool_calls",
                              "calls": [{"name": "f", "arguments": {"a": 2}}, {"name": "f", "arguments": {"a": 1}}]})
    assert exact["decision"] and exact["count"] and exact["names"] and exact["args"] and exact["full"]
    one = score_case(case, {"content": None, "finish": "tool_calls", "calls": [{"name": "f", "arguments": {"a": 1}}]})
    assert one["decision"] and not one["count"] and not one["names"] and not one["full"]
    wrong_value = score_case(case, {"content": None, "finish": "tool_calls", "calls": [
        {"name": "f", "arguments": {"a": 1}}, {"name": "f", "arguments": {"a": 3}}]})
    assert wrong_value["names"] and not wrong_value["args"] and not wrong_value["full"]
    text = score_case(case, {"content": "no", "finish": "stop", "calls": []})
    assert not text["decision"] and not text["full"]


def test_scoring_of_text_cases_copied_values_and_cut_answers() -> None:
    case = _case("irrelevance", [], shown={"g": ["Madrid, ES", 10]})
    assert score_case(case, {"content": "sorry", "finish": "stop", "calls": []})["full"]
    called = score_case(case, {"content": None, "finish": "tool_calls",
                               "calls": [{"name": "g", "arguments": {"location": "Madrid, ES", "n": 10}}]})
    assert not called["decision"] and called["copied_values"] == 2
    cut = score_case(case, {"content": None, "finish": "length", "calls": []})
    assert cut["incomplete"] and cut["full"]  # scored as no call, but counted as an artefact


def test_summary_reports_every_documented_field() -> None:
    call = _case("simple", [{"name": "f", "arguments": {}}])
    text = _case("general", [])
    scored = [score_case(call, {"content": None, "finish": "tool_calls", "calls": [{"name": "f", "arguments": {}}]}),
              score_case(text, {"content": None, "finish": "tool_calls", "calls": [{"name": "f", "arguments": {}}]})]
    margins = {"simple": {"decision": [2.0], "more": [], "stop": [-3.0]}, "general": {"decision": [1.0], "more": [],
                                                                                     "stop": []}}
    out = summarize(scored, margins)
    assert out["categories"]["simple"]["full_match"] == 1.0
    assert out["categories"]["simple"]["args_exact"] == 1.0
    assert out["categories"]["simple"]["another_call_minus_end_when_done"] == -3.0
    assert out["categories"]["general"]["decision_accuracy"] == 0.0
    assert "args_exact" not in out["categories"]["general"]
    assert out["summary"]["full_match"] == 0.5
    assert out["summary"]["call_categories_full_match"] == 1.0 and out["summary"]["text_categories_full_match"] == 0.0


def test_decision_margins_read_the_logits_of_a_full_forward_pass(tiny_model_dir) -> None:
    """The margins come from the vocabulary projection at the decision positions only; they are the
    differences a pass over every position gives at those positions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolcall.chat_template import render_assistant
    from toolcall.messages import canonicalize_messages
    from toolcall.metadata import saved_tool_format
    from toolcall.tokens import CONTENT, FUNCTION_CALL

    cases = margin_subset(build_devset(2, 0), 1)
    assert any(len(c.expected_calls) > 1 for c in cases) and any(not c.expected_calls for c in cases)
    got = decision_margins(str(tiny_model_dir), cases)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    call_id, text_id = tokenizer.convert_tokens_to_ids([FUNCTION_CALL, CONTENT])
    want: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        prompt = tokenizer.apply_chat_template(canonicalize_messages(case.messages), tools=case.tools,
                                               add_generation_prompt=True, tokenize=False,
                                               tool_format=saved_tool_format(tiny_model_dir))
        gold = ({"role": "assistant", "tool_calls": [{"function": c} for c in case.expected_calls]}
                if case.expected_calls else {"role": "assistant", "content": "…"})
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        g = tokenizer(render_assistant(gold, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([p + g])).logits[0]
        m = want.setdefault(case.category, {"decision": [], "more": [], "stop": []})
        m["decision"].append(float(logits[len(p) - 1, call_id] - logits[len(p) - 1, text_id]))
        after = [len(p) + j - 1 for j, t in enumerate(g) if j > 0 and t in (call_id, tokenizer.eos_token_id)]
        for k, pos in enumerate(after if case.expected_calls else []):
            m["more" if k < len(after) - 1 else "stop"].append(float(logits[pos, call_id] - logits[pos, tokenizer.eos_token_id]))
    assert got.keys() == want.keys()
    for category, margins in want.items():
        for key, values in margins.items():
            assert got[category][key] == pytest.approx(values, abs=1e-4), (category, key)
    assert sum(len(m["more"]) for m in got.values()) > 0 and sum(len(m["stop"]) for m in got.values()) > 0
