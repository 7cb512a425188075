"""The model a stage trains: loaded in the stage's dtype, optionally only its top layers trainable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.config import ConfigError
from stages.training.config import SFTStageConfig

if TYPE_CHECKING:  # heavy imports stay inside functions
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def load_model(config: SFTStageConfig) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        config.model, dtype=getattr(torch, config.dtype), attn_implementation=config.attn_implementation
    )
    if config.trainable_top_layers is not None:
        freeze_below_top_layers(model, config.trainable_top_layers)
    total, trainable = count_parameters(model)
    log.info("model %s: %.1f M parameters, %.1f M trainable", config.model, total / 1e6, trainable / 1e6)
    return model


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
