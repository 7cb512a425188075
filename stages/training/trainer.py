"""Training one stage with trl's ``SFTTrainer``, and saving the final model atomically.

:func:`build_trainer` is the one place the trainer is put together (arguments, datasets, collator,
callbacks): a change to what the loss sees goes there and into ``data``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.config import ConfigError
from stages.hf_assets import forget_how_loaded
from stages.training.checkpoints import (
    RUN_DIR_ENV,
    find_resumable_checkpoint,
    prepare_checkpoint_dir,
    run_dir_of,
    run_fingerprint,
)
from stages.training.config import SFTStageConfig
from stages.training.curves import make_dvclive_callback, publish_curves
from stages.training.data import TokenizedSplit, read_stage_splits
from stages.training.model import cpu_has_native_bf16, load_model
from toolcall.metadata import METADATA_FILE, metadata_text
from toolcall.tokens import CONTENT, FUNCTION_CALL

if TYPE_CHECKING:  # heavy imports stay inside functions
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)



def build_sft_config(config: SFTStageConfig, eval_enabled: bool, output_dir: Path | None = None) -> Any:
    """trl's SFTConfig: the training arguments of this stage's hyperparameters; checkpoints go to
    ``output_dir`` (the run's folder, :mod:`stages.training.checkpoints`), by default ``checkpoint_dir``."""
    import torch
    from trl import SFTConfig

    if config.bf16 and not torch.cuda.is_available() and not cpu_has_native_bf16():
        log.warning(
            "bf16 on a CPU without AVX512-BF16/AMX: autocast emulates it (measured 2 tok/s against 7 "
            "for float32 on SmolLM2-135M, AVX2, 2 cores); set bf16: false here"
        )
    kwargs: dict[str, Any] = {}
    if config.lr_scheduler == "cosine_with_min_lr":
        # As a ratio: the absolute `min_lr` reads optimizer.defaults, which DeepSpeed's optimizer lacks.
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": config.min_learning_rate / config.learning_rate}
    return SFTConfig(
        output_dir=str(output_dir or config.checkpoint_dir),
        # Labels come from the template's generation spans in `tokenize_conversation`; the data
        # reaches trl already tokenized, so trl's own assistant_only_loss path stays off.
        assistant_only_loss=False,
        packing=config.packing,
        packing_strategy="bfd",
        max_length=config.packed_length,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        weight_decay=config.weight_decay,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        deepspeed=config.deepspeed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if (eval_enabled and config.eval_steps) else "no",
        eval_steps=config.eval_steps if eval_enabled else None,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        dataloader_num_workers=0,
        # transformers refuses bf16 without an accelerator unless told the CPU is intended.
        use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )


def build_trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: Any, train_split: TokenizedSplit,
                  eval_split: TokenizedSplit | None, callbacks: list[Any], decision_weight: float = 1.0) -> Any:
    """trl's SFTTrainer on already tokenized rows; trl packs them and its collator takes the loss
    over the ``labels`` column (:mod:`stages.training.data`). ``decision_weight`` != 1 weights the
    decision tokens' loss (:mod:`stages.training.loss`)."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from stages.training.loss import make_trainer_class, score_labelled_only_on_cpu

    if not torch.cuda.is_available():
        score_labelled_only_on_cpu()
    trainer_cls: Any = SFTTrainer
    if decision_weight != 1.0:
        call_id, text_id = tokenizer.convert_tokens_to_ids([FUNCTION_CALL, CONTENT])
        trainer_cls = make_trainer_class(decision_weight, (call_id, text_id, tokenizer.eos_token_id))
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(train_split.columns()),
        eval_dataset=Dataset.from_dict(eval_split.columns()) if eval_split is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def save_final_model(trainer: Any, tokenizer: PreTrainedTokenizerBase, config: SFTStageConfig,
                     tool_format: str) -> None:
    """Write ``output_dir`` through a ``.partial`` folder renamed at the end (a killed save leaves none)."""
    output = Path(config.output_dir)
    partial = output.with_name(output.name + ".partial")
    if trainer.is_world_process_zero() and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    # The trainer saves its processing class too: what it writes must not say how it was loaded
    # (HF_HUB_OFFLINE=1 under make wrote "local_files_only": true, a bare `dvc repro` false).
    forget_how_loaded(tokenizer)
    trainer.save_model(str(partial))  # every rank: ZeRO-3 gathers the shards here
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(partial))
        metadata_path = Path(config.model) / METADATA_FILE
        if metadata_path.is_file():
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
            # The server renders prompts with the recipe the model was trained on.
            metadata["tool_format"] = tool_format
            (partial / METADATA_FILE).write_text(metadata_text(metadata), encoding="utf-8")
        for leftover in ("training_args.bin",):  # trainer bookkeeping, not part of the model
            (partial / leftover).unlink(missing_ok=True)
        if output.exists():
            shutil.rmtree(output)
        os.replace(partial, output)
        log.info("saved %s", output)
    trainer.accelerator.wait_for_everyone()


def train(config: SFTStageConfig, tool_format: str, housekeeping: bool = True) -> dict[str, Any]:
    """Train one stage in this process (one rank when started by accelerate). Returns the summary."""
    from transformers import AutoTokenizer

    if housekeeping:
        run_dir, resume = prepare_checkpoint_dir(config, tool_format)
    else:
        # A rank started by the launcher: the run folder it prepared, looked at only.
        run_dir = Path(os.environ.get(RUN_DIR_ENV) or run_dir_of(config, run_fingerprint(config, tool_format)))
        resume = find_resumable_checkpoint(run_dir, remove_incomplete=False)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if not re.search(r"{%-?\s*generation\s*-?%}", tokenizer.chat_template or ""):
        raise ConfigError(f"{config.model}: the tokenizer's chat template has no {{% generation %}} markers")
    train_split, eval_split = read_stage_splits(config, tokenizer, tool_format)

    # Arguments before the model: with ZeRO-3 they switch from_pretrained to partitioned loading.
    args = build_sft_config(config, eval_enabled=eval_split is not None, output_dir=run_dir)
    model = load_model(config)
    resume_step = None
    if resume is not None:
        resume_step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
    # The curves are written beside the run's checkpoints, so a resumed run continues its own
    # history (never another experiment's), and copied to the stage's output at the end.
    live_dir = run_dir / "dvclive"
    live = make_dvclive_callback(str(live_dir), resume_step)
    trainer = build_trainer(model, tokenizer, args, train_split, eval_split, callbacks=[live],
                            decision_weight=config.decision_weight)
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
            "train_system_prompts_dropped": train_split.system_prompts_dropped,
        },
    }
    if eval_split is not None:
        metrics = trainer.evaluate()
        summary["eval"] = {"loss": metrics.get("eval_loss")}
        summary["data"]["eval_rows_used"] = len(eval_split.input_ids)
    save_final_model(trainer, tokenizer, config, tool_format)
    if trainer.is_world_process_zero():
        live.close(summary)
        publish_curves(live_dir, Path(config.dvclive_dir))
        log.info("summary: %s", json.dumps(summary, sort_keys=True))
    return summary


def _last_logged(trainer: Any, key: str) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return float(entry[key])
    return None
