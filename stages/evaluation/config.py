"""The ``evaluate`` params section: models to evaluate, BFCL categories, bfcl and server settings."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from stages.config import ConfigError, StrictModel, load_section
from stages.evaluation.categories import INTERNET_CATEGORIES, SCORING_CATEGORIES

FC_SUFFIX = "-FC"


class ModelEntry(StrictModel):
    path: str
    format: Literal["auto", "octupus", "hermes"]


class ServerSettings(StrictModel):
    backend: Literal["transformers", "vllm", "llamacpp"]
    engine: Literal["llguidance", "lm-format-enforcer"]
    # BFCL sends no max_tokens: this is the server's default output cap for every request.
    max_output_tokens: int
    # A text answer ends after this many tokens (0 = at max_output_tokens): no call can follow text.
    max_text_tokens: int = Field(ge=0)
    # null: the model's own context (SmolLM2: 8,192; some multi-turn cases need > 4,096).
    max_context: int | None
    threads: int | None
    # transformers and llamacpp backends: requests decoded together (continuous batching; 1 = one at a time).
    max_batch: int = Field(ge=1)
    # transformers and llamacpp backends: MiB of prompt KV kept for reuse (multi-turn steps resend
    # the whole conversation); 0 = off.
    prefix_cache_mb: float = Field(ge=0)
    # llamacpp backend: the model is converted to a GGUF of this type for the run (f32: the same
    # weights; bf16, the CPU default's: rounded, faster where the CPU has AVX512-BF16), with the
    # llama.cpp build of this venv (`make llamacpp-venv`).
    gguf_type: str = "f32"
    llamacpp_venv: str = ".venv-llamacpp"
    startup_timeout_s: float
    extra_args: list[str]


class DevSettings(StrictModel):
    """The development evaluation (:mod:`stages.evaluation.dev`), run on the same server as BFCL."""

    # cases of each single-request dev category (held-out synthetic functions); 0: none
    cases_per_category: int = Field(ge=0)
    # of those, how many get the teacher-forced decision margins (a forward pass each; octupus only)
    margin_cases_per_category: int = Field(ge=0)
    # multi-turn sessions against held-out stateful environments (the ``sessions`` category; 0: off)
    sessions: int = Field(default=0, ge=0)
    seed: int
    max_output_tokens: int = Field(ge=1)
    metrics_dir: str


class EvaluateConfig(StrictModel):
    models: dict[str, ModelEntry]
    # category -> number of leading cases, or "all"
    categories: dict[str, int | Literal["all"]]
    bfcl_model: str
    bfcl_venv: str
    work_dir: str
    metrics_dir: str
    # cases bfcl sends at once (its --num-threads); more than the server's batch only queues.
    concurrency: int = Field(ge=1)
    server: ServerSettings
    dev: DevSettings

    @field_validator("categories")
    @classmethod
    def _check_categories(cls, value: dict[str, int | str]) -> dict[str, int | str]:
        if not value:
            raise ValueError("at least one category is needed")
        refused = [c for c in value if c in INTERNET_CATEGORIES]
        if refused:
            raise ValueError(
                f"categories {refused} need the internet (web_search calls SerpAPI, memory_* needs a "
                "downloaded embedding model and its prerequisite runs) and would silently score 0 here; "
                "remove them")
        unknown = [c for c in value if c not in SCORING_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown BFCL categories {unknown}; known: {list(SCORING_CATEGORIES)}")
        bad = [c for c, n in value.items() if n != "all" and (isinstance(n, bool) or n < 1)]
        if bad:
            raise ValueError(f"case counts must be >= 1 or 'all': {bad}")
        return value

    @field_validator("bfcl_model")
    @classmethod
    def _check_bfcl_model(cls, value: str) -> str:
        # bfcl maps '_' in result folder names back to '/', and only FC names take the tools path.
        if "_" in value or not value.endswith(FC_SUFFIX):
            raise ValueError(f"bfcl_model '{value}' must end with '{FC_SUFFIX}' and contain no '_'")
        return value

    @property
    def api_model_name(self) -> str:
        """What bfcl sends as ``model``: its registry name without ``-FC``."""
        return self.bfcl_model[: -len(FC_SUFFIX)]


def load_config(path: str | os.PathLike[str], model_key: str) -> tuple[EvaluateConfig, ModelEntry]:
    config = load_section("evaluate", EvaluateConfig, path)
    if model_key not in config.models:
        raise ConfigError(f"{path}: evaluate.models has no '{model_key}' (known: {sorted(config.models)})")
    return config, config.models[model_key]

