"""The ``train_stage1`` / ``train_stage2`` params sections as typed, strict config objects.

A section holds its paths, the hyperparameters and the launcher, all at one level. ``params.yaml``
gives the 2-core CPU values; a recipe (``recipes/gpu-8x.yaml``) sets the GPU ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from stages.config import StrictModel
from toolcall.chat_template import DEFAULT_TOOL_FORMAT

# Fields that change how often a run logs, saves or evaluates, not what it trains: editing them
# keeps the checkpoints resumable.
BOOKKEEPING_FIELDS = ("logging_steps", "save_steps", "save_total_limit", "eval_steps", "max_eval_rows")


class ToolListPadding(StrictModel):
    """Tool lists lengthened with tools of other rows (``pad_tool_lists``)."""

    share: float = Field(default=0.0, ge=0.0, le=1.0, description=(
        "share of the rows offering tools (those of `answers`) whose tool list is lengthened; 0: off"))
    tools: tuple[PositiveInt, PositiveInt] = Field(default=(6, 12), description=(
        "[min, max] tools a lengthened list holds (drawn per row); rows already that long are kept"))
    answers: Literal["calls", "any"] = Field(default="calls", description=(
        "which rows: calls (rows whose answers call a tool) or any (text answers too)"))

    @model_validator(mode="after")
    def _check_range(self) -> ToolListPadding:
        if self.tools[0] > self.tools[1]:
            raise ValueError(f"pad_tool_lists.tools: min {self.tools[0]} is above max {self.tools[1]}")
        return self


class TrainHyperparameters(StrictModel):
    """What a run trains with (CPU budget in params.yaml, the original's values in the GPU recipes)."""

    learning_rate: PositiveFloat
    min_learning_rate: NonNegativeFloat = Field(description="floor of cosine_with_min_lr")
    lr_scheduler: Literal["cosine_with_min_lr", "cosine", "linear", "constant_with_warmup"]
    warmup_steps: NonNegativeInt
    num_train_epochs: PositiveFloat
    max_steps: PositiveInt | None = Field(description="stop after this many optimizer steps; null: epochs decide")
    max_length: PositiveInt = Field(description="longest row in tokens (truncated beyond) and the packed "
                                                "sequence length, unless max_length_by_source sets longer rows")
    max_length_by_source: dict[str, PositiveInt] = Field(default_factory=dict, description=(
        "data source (a row's `source`) -> the longest row of that source in tokens; the packed sequence "
        "length is then the longest of these and max_length (multi-turn sessions need several thousand "
        "tokens where single requests are trained best at a few hundred)"))
    packing: bool = Field(default=True, description=(
        "pack rows into sequences of the packed length (best-fit decreasing, padding-free); false: one "
        "row per sequence. On a CPU a packed sequence needs an attention mask that keeps its rows apart "
        "(measured with SmolLM2-135M, 2 cores: 111 tok/s packed against 149 for one row of 2,048 tokens, "
        "152 against 188 at ~500), so one row per sequence is faster there; GPUs pack without a mask"))
    per_device_batch_size: PositiveInt = Field(description="sequences per device and micro-step")
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
    drop_system_prompt: float = Field(
        ge=0.0, le=1.0,
        description="share of rows with tools trained without their system message (API clients such as "
                    "BFCL send tools with no system prompt; dataset boilerplate otherwise precedes every call)")
    pad_tool_lists: ToolListPadding = Field(default_factory=ToolListPadding, description=(
        "lengthen the tool lists of some rows with other rows' tools (the row's own stay, none named after "
        "the user's words, the list is shuffled, a row too long for its length limit gets fewer): the "
        "datasets offer 1-5 tools a row, clients send 10-40"))
    decision_weight: PositiveFloat = Field(
        description="loss weight of the decision tokens (text or call; another call or end); 1: plain SFT")
    max_eval_rows: NonNegativeInt | None = Field(description="validation rows for the final eval; 0: no eval")
    eval_steps: PositiveInt | None = Field(description="also evaluate every N steps; null: only at the end")
    logging_steps: PositiveInt
    save_steps: PositiveInt
    save_total_limit: PositiveInt
    seed: int

    @model_validator(mode="after")
    def _check_hyperparameters(self) -> TrainHyperparameters:
        if self.min_learning_rate >= self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must be below learning_rate ({self.learning_rate})"
            )
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ValueError(f"deepspeed config not found: {self.deepspeed}")
        return self

    @property
    def packed_length(self) -> int:
        """The packed sequence length: the longest row any source may have."""
        return max([self.max_length, *self.max_length_by_source.values()])

    def hyperparameters(self) -> dict[str, object]:
        """The hyperparameter fields alone, as JSON values (what a checkpoint was trained with)."""
        return self.model_dump(mode="json", include=set(TrainHyperparameters.model_fields))


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


class SFTStageConfig(TrainHyperparameters):
    """One training stage: inputs, outputs, hyperparameters and launcher."""

    model: str = Field(description="input model directory (HF layout)")
    data_dir: str = Field(description="directory holding train.jsonl and validation.jsonl")
    output_dir: str
    checkpoint_dir: str
    dvclive_dir: str
    launcher: Literal["python", "accelerate"]
    accelerate: AccelerateSettings

    @model_validator(mode="after")
    def _check_launcher(self) -> SFTStageConfig:
        if self.launcher == "accelerate" and not Path(self.accelerate.config_file).is_file():
            raise ValueError(f"accelerate config not found: {self.accelerate.config_file}")
        return self


class Stage1Config(SFTStageConfig):
    pass


class Stage2Config(SFTStageConfig):
    tool_format: Literal["v1", "v2"] = Field(description="recipe passed to the chat template as `tool_format`")


def tool_format_of(config: SFTStageConfig) -> str:
    """The ``tool_format`` the chat template renders this stage's rows with."""
    return getattr(config, "tool_format", DEFAULT_TOOL_FORMAT)
