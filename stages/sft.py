"""Supervised fine-tuning shared by ``train_stage1`` and ``train_stage2``.

One code path for every machine: the stage either trains in this process (``launcher: python``,
the CPU default) or re-executes itself under ``accelerate launch`` with a DeepSpeed config
(``launcher: accelerate``, multi-GPU / multi-node); the re-executed children run exactly the
same :func:`train` as the in-process run.

What a run does:

1. Reads ``<data_dir>/{train,validation}.jsonl`` (rows ``{"messages", "tools", "source"}`` whose
   values are JSON strings, see docs/design.md), renders each conversation with the *tokenizer's*
   chat template (the one saved by ``edit_tokenizer``; no copy lives here) and takes the labels
   from the template's ``{% generation %}`` spans, so the loss covers exactly what the model must
   learn. Rows that do not parse or render are dropped and counted, never fatal.
2. Trains with trl's ``SFTTrainer``: padding-free best-fit-decreasing packing, cosine schedule to a
   floor learning rate, optionally only the top N decoder layers plus the embeddings (the CPU
   budget), optionally DeepSpeed ZeRO.
3. Checkpoints into ``checkpoint_dir`` (a DVC ``persist: true`` folder) and resumes from the
   latest complete ``checkpoint-N`` when the run is started again with the same inputs and
   hyperparameters; checkpoints of a different run are removed instead of resumed.
4. Logs loss, learning rate, grad norm and the final validation loss with dvclive, and saves the
   final model (safetensors + tokenizer + template + ``octupus.json``) to ``output_dir`` in the
   layout ``AutoModelForCausalLM`` and vLLM read. The save is atomic: a killed save never leaves a
   half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, NonNegativeFloat, NonNegativeInt, model_validator

from stages.config import ConfigError, StrictModel, log_config
import toolcall
from toolcall.arguments import ArgumentsError
from toolcall.chat_template import DEFAULT_TOOL_FORMAT
from toolcall.messages import canonicalize_messages
from toolcall.metadata import METADATA_FILE as PROJECT_METADATA_FILE

if TYPE_CHECKING:  # heavy imports stay inside functions so `--help` and config errors are instant
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Set in the children of `accelerate launch` so they train instead of launching again.
LAUNCHED_ENV = "OCTUPUS_SFT_LAUNCHED"
FINGERPRINT_FILE = "run_fingerprint.json"
# Fields that change how often a run logs, saves or evaluates, not what it trains: editing them
# keeps the checkpoints resumable.
BOOKKEEPING_FIELDS = ("logging_steps", "save_steps", "save_total_limit", "eval_steps", "max_eval_rows")
TRAIN_CURVES = frozenset({"loss", "learning_rate", "grad_norm", "mean_token_accuracy"})
EVAL_CURVES = frozenset({"eval_loss", "eval_mean_token_accuracy"})
IGNORE_INDEX = -100
CONFIGS_DIR = Path(__file__).parent / "configs"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class TrainProfile(StrictModel):
    """Hyperparameters of one hardware profile (``cpu`` budget or the original ``gpu`` recipe)."""

    learning_rate: PositiveFloat
    min_learning_rate: NonNegativeFloat = Field(description="floor of cosine_with_min_lr")
    lr_scheduler: Literal["cosine_with_min_lr", "cosine", "linear", "constant_with_warmup"]
    warmup_steps: NonNegativeInt
    num_train_epochs: PositiveFloat
    max_steps: PositiveInt | None = Field(description="stop after this many optimizer steps; null: epochs decide")
    max_length: PositiveInt = Field(description="packed sequence length; longer conversations are truncated")
    per_device_batch_size: PositiveInt = Field(description="packed sequences per device and micro-step")
    gradient_accumulation_steps: PositiveInt
    max_grad_norm: PositiveFloat
    weight_decay: NonNegativeFloat
    bf16: bool = Field(description="bf16 mixed precision (CPU autocast on CPU)")
    dtype: Literal["float32", "bfloat16"] = Field(description="dtype the weights are loaded and saved in")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"]
    gradient_checkpointing: bool
    deepspeed: str | None = Field(description="DeepSpeed JSON config (e.g. stages/configs/zero2.json); null: none")
    trainable_top_layers: PositiveInt | None = Field(
        description="train only the top N decoder layers + embeddings + final norm; null: all weights"
    )
    max_train_rows: PositiveInt | None = Field(description="random subset of the training rows; null: all")
    max_eval_rows: NonNegativeInt | None = Field(description="validation rows for the final eval; 0: no eval")
    eval_steps: PositiveInt | None = Field(description="also evaluate every N steps; null: only at the end")
    logging_steps: PositiveInt
    save_steps: PositiveInt
    save_total_limit: PositiveInt
    seed: int

    @model_validator(mode="after")
    def _check(self) -> TrainProfile:
        if self.min_learning_rate >= self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must be below learning_rate ({self.learning_rate})"
            )
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ValueError(f"deepspeed config not found: {self.deepspeed}")
        return self


class AccelerateSettings(StrictModel):
    """Arguments of ``accelerate launch`` used when ``launcher: accelerate``.

    ``config_file`` carries the static part (DeepSpeed plugin, mixed precision); the topology is
    given here so one config file serves every cluster size.
    """

    config_file: str
    num_machines: PositiveInt
    num_processes: PositiveInt = Field(description="total processes over all machines (GPUs)")
    machine_rank: NonNegativeInt
    main_process_ip: str | None
    main_process_port: PositiveInt | None

    @model_validator(mode="after")
    def _check(self) -> AccelerateSettings:
        if self.num_processes < self.num_machines:
            raise ValueError("num_processes counts processes over all machines: it cannot be below num_machines")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} is out of range for {self.num_machines} machine(s)")
        if self.num_machines > 1 and (self.main_process_ip is None or self.main_process_port is None):
            raise ValueError("multi-node runs need main_process_ip and main_process_port")
        return self


class SFTStageConfig(StrictModel):
    """One training stage: inputs, outputs, profiles and launcher."""

    model: str = Field(description="input model directory (HF layout)")
    data_dir: str = Field(description="directory holding train.jsonl and validation.jsonl")
    output_dir: str
    checkpoint_dir: str
    dvclive_dir: str
    profile: str = Field(description="key of `profiles` to run with")
    profiles: dict[str, TrainProfile]
    launcher: Literal["python", "accelerate"]
    accelerate: AccelerateSettings

    @model_validator(mode="after")
    def _check_profile(self) -> SFTStageConfig:
        if self.profile not in self.profiles:
            raise ValueError(f"profile '{self.profile}' is not one of {sorted(self.profiles)}")
        if self.launcher == "accelerate" and not Path(self.accelerate.config_file).is_file():
            raise ValueError(f"accelerate config not found: {self.accelerate.config_file}")
        return self

    @property
    def active(self) -> TrainProfile:
        return self.profiles[self.profile]


class Stage1Config(SFTStageConfig):
    pass


class Stage2Config(SFTStageConfig):
    tool_format: Literal["v1", "v2"] = Field(description="recipe passed to the chat template as `tool_format`")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizedSplit:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    rows_read: int = 0

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
    return messages, tools


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tool_format: str,
    max_length: int,
) -> tuple[list[int], list[int], bool]:
    """Render with the tokenizer's template; labels are the ``{% generation %}`` tokens, -100 elsewhere.

    Returns (input_ids, labels, truncated). Raises :class:`RowError` when nothing trainable is left.
    """
    try:
        # Train on the exact argument bytes parse_output returns at serving time (compact JSON).
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
    return input_ids, labels, truncated


def read_split(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    tool_format: str,
    max_length: int,
    max_rows: int | None,
    seed: int,
) -> TokenizedSplit:
    """Tokenize one split; a random subset of ``max_rows`` rows (fixed by ``seed``) when given."""
    from tqdm.auto import tqdm

    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    split = TokenizedSplit(rows_read=len(lines))
    if max_rows is not None and max_rows < len(lines):
        lines = random.Random(seed).sample(lines, max_rows)
    for line in tqdm(lines, desc=f"tokenizing {path}", unit="row", mininterval=2.0):
        try:
            messages, tools = decode_row(line)
            input_ids, labels, truncated = tokenize_conversation(
                tokenizer, messages, tools, tool_format, max_length
            )
        except RowError as exc:
            split.dropped[str(exc)] += 1
            continue
        split.truncated += truncated
        split.input_ids.append(input_ids)
        split.labels.append(labels)
    log.info(
        "%s: %d rows read, %d used (%d truncated to %d tokens), dropped %s; %d tokens, %d trained",
        path,
        split.rows_read,
        len(split.input_ids),
        split.truncated,
        max_length,
        dict(split.dropped) or "none",
        split.tokens,
        split.trained_tokens,
    )
    return split


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def freeze_below_top_layers(model: PreTrainedModel, top_layers: int) -> None:
    """Train only the top ``top_layers`` decoder layers, the final norm and the output embeddings.

    The output embeddings stay trainable because the special tokens added by ``edit_tokenizer``
    start from an initialisation and must be learnt; with tied embeddings (SmolLM2) that matrix is
    also the input table, so the input rows move with it. No gradient flows back through the input
    side: that would cost a backward pass through every frozen layer (measured 1.7x slower a
    step on 2 CPU cores) for rows the output side already trains.
    """
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ConfigError(f"trainable_top_layers: {type(model).__name__} has no `layers` list to freeze")
    if top_layers > len(layers):
        raise ConfigError(f"trainable_top_layers={top_layers} but the model has {len(layers)} layers")
    for param in model.parameters():
        param.requires_grad_(False)
    trainable = list(layers[len(layers) - top_layers :])
    output_embeddings = model.get_output_embeddings()
    trainable.append(output_embeddings if output_embeddings is not None else model.get_input_embeddings())
    if getattr(decoder, "norm", None) is not None:
        trainable.append(decoder.norm)
    for module in trainable:
        for param in module.parameters():
            param.requires_grad_(True)
    model.get_input_embeddings().register_forward_hook(_detach_output)


def _detach_output(module: Any, inputs: Any, output: Any) -> Any:
    return output.detach()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX); elsewhere autocast emulates it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: cannot tell, trust the params
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:  # tied embeddings count once
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return total, trainable


# --------------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int | None:
    prefix = "checkpoint-"
    if not path.is_dir() or not path.name.startswith(prefix) or not path.name[len(prefix) :].isdigit():
        return None
    return int(path.name[len(prefix) :])


def find_resumable_checkpoint(checkpoint_dir: Path, remove_incomplete: bool = True) -> Path | None:
    """The latest complete ``checkpoint-N``; incomplete ones (killed while saving) are removed.

    The Trainer writes ``trainer_state.json`` last, so its presence marks a finished checkpoint.
    Ranks started by ``accelerate launch`` only look (``remove_incomplete=False``): the launching
    process already cleaned up, and concurrent deletes would race.
    """
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(
        ((step, p) for p in checkpoint_dir.iterdir() if (step := _checkpoint_step(p)) is not None),
        reverse=True,
    )
    for step, path in found:
        if (path / "trainer_state.json").is_file():
            return path
        if not remove_incomplete:
            continue
        log.warning("removing incomplete checkpoint %s (no trainer_state.json: killed while saving)", path)
        shutil.rmtree(path)
    return None


def _hash_file(path: Path, digest: Any) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def run_fingerprint(config: SFTStageConfig, tool_format: str) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed: hyperparameters, data and input model."""
    digest = hashlib.sha256()
    data_dir = Path(config.data_dir)
    for name in ("train.jsonl", "validation.jsonl"):
        if (data_dir / name).is_file():
            _hash_file(data_dir / name, digest)
    model_dir = Path(config.model)
    # Weights are large: their names and sizes identify them well enough next to config/tokenizer bytes.
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        digest.update(str(path.relative_to(model_dir)).encode())
        if path.suffix in {".json", ".jinja", ".txt"}:
            _hash_file(path, digest)
        else:
            digest.update(str(path.stat().st_size).encode())
    code = hashlib.sha256()
    # A fix in how rows become tokens must not resume a checkpoint trained on the old tokens.
    for module_file in (Path(__file__), *toolcall.source_files()):
        _hash_file(module_file, code)
    return {
        "code_sha256": code.hexdigest(),
        "profile": config.profile,
        "hyperparameters": config.active.model_dump(mode="json", exclude=set(BOOKKEEPING_FIELDS)),
        "tool_format": tool_format,
        "inputs_sha256": digest.hexdigest(),
    }


def prepare_checkpoint_dir(config: SFTStageConfig, tool_format: str) -> Path | None:
    """Make ``checkpoint_dir`` hold only checkpoints of this run; return the one to resume from."""
    checkpoint_dir = Path(config.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(config, tool_format)
    fingerprint_path = checkpoint_dir / FINGERPRINT_FILE
    previous = json.loads(fingerprint_path.read_text()) if fingerprint_path.is_file() else None
    if previous != fingerprint:
        stale = [p for p in checkpoint_dir.iterdir() if _checkpoint_step(p) is not None]
        if stale:
            log.warning(
                "inputs or hyperparameters changed since %s were written: removing them and starting over",
                ", ".join(sorted(p.name for p in stale)),
            )
            for path in stale:
                shutil.rmtree(path)
        fingerprint_path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    checkpoint = find_resumable_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    return checkpoint


# --------------------------------------------------------------------------------------------
# dvclive
# --------------------------------------------------------------------------------------------


def _trim_dvclive_history(dvclive_dir: Path, last_step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from, so the curves do not fold back."""
    for tsv in (dvclive_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        columns = header.split("\t")
        if "step" not in columns:
            continue
        index = columns.index("step")
        kept = [r for r in rows if int(float(r.split("\t")[index])) <= last_step]
        tsv.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")


def make_dvclive_callback(dvclive_dir: str, resume_step: int | None) -> Any:
    """A TrainerCallback that writes train/eval curves to ``dvclive_dir`` on the main process."""
    from transformers import TrainerCallback

    class DVCLiveMetrics(TrainerCallback):
        """Own callback rather than transformers' DVCLiveCallback: that one writes a dvc.yaml of
        its own and may start DVC experiments, and the pipeline's dvc.yaml is the only one."""

        def __init__(self) -> None:
            self.live: Any = None

        def _open(self) -> Any:
            if self.live is None:
                from dvclive import Live

                resume = resume_step is not None and Path(dvclive_dir).is_dir()
                if resume:
                    _trim_dvclive_history(Path(dvclive_dir), resume_step)
                self.live = Live(dir=dvclive_dir, resume=resume, save_dvc_exp=False, dvcyaml=None)
            return self.live

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            live = self._open()
            live.step = state.global_step
            for key, value in logs.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    continue
                if key in EVAL_CURVES:
                    live.log_metric(f"eval/{key[len('eval_'):]}", value)
                elif key in TRAIN_CURVES:
                    live.log_metric(f"train/{key}", value)
            live.make_summary()

        def close(self, extra_summary: dict[str, dict[str, Any]]) -> None:
            if self.live is None:
                return
            for group, values in extra_summary.items():
                self.live.summary.setdefault(group, {}).update(values)
            self.live.make_summary()
            self.live.end()

    return DVCLiveMetrics()


# --------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------


def accelerate_command(config: SFTStageConfig, module: str, params_path: str) -> list[str]:
    """The ``accelerate launch`` argv that re-runs ``module`` on every process of the cluster."""
    acc = config.accelerate
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        acc.config_file,
        "--num_machines",
        str(acc.num_machines),
        "--num_processes",
        str(acc.num_processes),
        "--machine_rank",
        str(acc.machine_rank),
    ]
    if acc.main_process_ip is not None:
        argv += ["--main_process_ip", acc.main_process_ip]
    if acc.main_process_port is not None:
        argv += ["--main_process_port", str(acc.main_process_port)]
    return [*argv, "--module", module, "--params", params_path]


def stage_main(stage: str, config_cls: type[SFTStageConfig], doc: str, argv: list[str] | None) -> None:
    """Command line of both stages: parse, load the params section, run; config errors exit cleanly."""
    from stages.config import load_section, setup_logging, stage_argparser

    args = stage_argparser(doc.strip().splitlines()[0]).parse_args(argv)
    setup_logging()
    try:
        config = load_section(stage, config_cls, args.params)
        tool_format = getattr(config, "tool_format", DEFAULT_TOOL_FORMAT)
        run_stage(config, stage, f"stages.{stage}", args.params, tool_format)
    except ConfigError as exc:
        log.error("%s: %s", stage, exc)
        raise SystemExit(2) from exc


def run_stage(config: SFTStageConfig, stage: str, module: str, params_path: str, tool_format: str) -> None:
    """Entry point of both stages: launch according to ``config.launcher``, or train here."""
    log_config(stage, config)
    if config.launcher == "accelerate" and os.environ.get(LAUNCHED_ENV) != "1":
        # Housekeeping happens once, here, not racily in every rank.
        prepare_checkpoint_dir(config, tool_format)
        argv = accelerate_command(config, module, params_path)
        log.info("launching: %s", " ".join(argv))
        env = {**os.environ, LAUNCHED_ENV: "1"}
        completed = subprocess.run(argv, env=env, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"{stage}: accelerate launch exited with status {completed.returncode}")
        return
    train(config, tool_format, housekeeping=os.environ.get(LAUNCHED_ENV) != "1")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def build_sft_config(config: SFTStageConfig, eval_enabled: bool) -> Any:
    import torch
    from trl import SFTConfig

    p = config.active
    if p.bf16 and not torch.cuda.is_available() and not cpu_has_native_bf16():
        log.warning(
            "bf16 on a CPU without AVX512-BF16/AMX: autocast emulates it (measured 2 tok/s against 7 "
            "for float32 on SmolLM2-135M, AVX2, 2 cores); set bf16: false in profile '%s' here",
            config.profile,
        )
    kwargs: dict[str, Any] = {}
    if p.lr_scheduler == "cosine_with_min_lr":
        # As a ratio: the absolute `min_lr` reads optimizer.defaults, which DeepSpeed's optimizer lacks.
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": p.min_learning_rate / p.learning_rate}
    return SFTConfig(
        output_dir=config.checkpoint_dir,
        # Labels come from the template's generation spans in `tokenize_conversation`; the data
        # reaches trl already tokenized, so trl's own assistant_only_loss path stays off.
        assistant_only_loss=False,
        packing=True,
        packing_strategy="bfd",
        max_length=p.max_length,
        per_device_train_batch_size=p.per_device_batch_size,
        per_device_eval_batch_size=p.per_device_batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        num_train_epochs=p.num_train_epochs,
        max_steps=p.max_steps if p.max_steps is not None else -1,
        learning_rate=p.learning_rate,
        lr_scheduler_type=p.lr_scheduler,
        warmup_steps=p.warmup_steps,
        max_grad_norm=p.max_grad_norm,
        weight_decay=p.weight_decay,
        bf16=p.bf16,
        gradient_checkpointing=p.gradient_checkpointing,
        deepspeed=p.deepspeed,
        logging_steps=p.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=p.save_steps,
        save_total_limit=p.save_total_limit,
        eval_strategy="steps" if (eval_enabled and p.eval_steps) else "no",
        eval_steps=p.eval_steps if eval_enabled else None,
        seed=p.seed,
        data_seed=p.seed,
        report_to="none",
        dataloader_num_workers=0,
        # transformers refuses bf16 without an accelerator unless told the CPU is intended.
        use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )


def load_model(config: SFTStageConfig) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    p = config.active
    model = AutoModelForCausalLM.from_pretrained(
        config.model, dtype=getattr(torch, p.dtype), attn_implementation=p.attn_implementation
    )
    if p.trainable_top_layers is not None:
        freeze_below_top_layers(model, p.trainable_top_layers)
    total, trainable = count_parameters(model)
    log.info("model %s: %.1f M parameters, %.1f M trainable", config.model, total / 1e6, trainable / 1e6)
    return model


def _save_final(trainer: Any, tokenizer: PreTrainedTokenizerBase, config: SFTStageConfig, tool_format: str) -> None:
    output = Path(config.output_dir)
    partial = output.with_name(output.name + ".partial")
    if trainer.is_world_process_zero() and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))  # every rank: ZeRO-3 gathers the shards here
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(partial))
        metadata_path = Path(config.model) / PROJECT_METADATA_FILE
        if metadata_path.is_file():
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
            # The server renders prompts with the recipe the model was trained on.
            metadata["tool_format"] = tool_format
            (partial / PROJECT_METADATA_FILE).write_text(
                json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        for leftover in ("training_args.bin",):  # trainer bookkeeping, not part of the model
            (partial / leftover).unlink(missing_ok=True)
        if output.exists():
            shutil.rmtree(output)
        os.replace(partial, output)
        log.info("saved %s", output)
    trainer.accelerator.wait_for_everyone()


def train(config: SFTStageConfig, tool_format: str, housekeeping: bool = True) -> dict[str, Any]:
    """Train one stage in this process (one rank when started by accelerate). Returns the summary."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    p = config.active
    if housekeeping:
        resume = prepare_checkpoint_dir(config, tool_format)
    else:
        resume = find_resumable_checkpoint(Path(config.checkpoint_dir), remove_incomplete=False)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if not re.search(r"{%-?\s*generation\s*-?%}", tokenizer.chat_template or ""):
        raise ConfigError(f"{config.model}: the tokenizer's chat template has no {{% generation %}} markers")

    data_dir = Path(config.data_dir)
    train_path, eval_path = data_dir / "train.jsonl", data_dir / "validation.jsonl"
    if not train_path.is_file():
        raise ConfigError(f"training data not found: {train_path}")
    train_split = read_split(train_path, tokenizer, tool_format, p.max_length, p.max_train_rows, p.seed)
    if not train_split.input_ids:
        raise ConfigError(f"{train_path}: no usable rows (dropped: {dict(train_split.dropped)})")
    eval_split = None
    if p.max_eval_rows != 0 and eval_path.is_file():
        eval_split = read_split(eval_path, tokenizer, tool_format, p.max_length, p.max_eval_rows, p.seed)
        if not eval_split.input_ids:
            eval_split = None

    def to_dataset(split: TokenizedSplit) -> Dataset:
        return Dataset.from_dict({"input_ids": split.input_ids, "labels": split.labels})

    # Arguments before the model: with ZeRO-3 they switch from_pretrained to partitioned loading.
    args = build_sft_config(config, eval_enabled=eval_split is not None)
    model = load_model(config)
    resume_step = None
    if resume is not None:
        resume_step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
    live = make_dvclive_callback(config.dvclive_dir, resume_step)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train_split),
        eval_dataset=to_dataset(eval_split) if eval_split is not None else None,
        processing_class=tokenizer,
        callbacks=[live],
    )
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    summary: dict[str, dict[str, Any]] = {
        "train": {
            "final_loss": _last_logged(trainer, "loss"),
            "global_step": trainer.state.global_step,
            "resumed_from_step": resume_step or 0,
            "tokens_seen": _last_logged(trainer, "num_tokens"),
            "runtime_s": round(result.metrics.get("train_runtime", float("nan")), 1),
        },
        "data": {
            "train_rows_used": len(train_split.input_ids),
            "train_rows_dropped": sum(train_split.dropped.values()),
            "train_rows_dropped_by_reason": dict(train_split.dropped),
            "train_rows_truncated": train_split.truncated,
            "train_trained_tokens": train_split.trained_tokens,
            "train_tokens": train_split.tokens,
        },
    }
    if eval_split is not None:
        metrics = trainer.evaluate()
        summary["eval"] = {"loss": metrics.get("eval_loss")}
        summary["data"]["eval_rows_used"] = len(eval_split.input_ids)
    _save_final(trainer, tokenizer, config, tool_format)
    if trainer.is_world_process_zero():
        live.close(summary)
        log.info("summary: %s", json.dumps(summary, sort_keys=True))
    return summary


def _last_logged(trainer: Any, key: str) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return float(entry[key])
    return None
