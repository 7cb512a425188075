"""Supervised fine-tuning shared by the stages ``train_stage1`` and ``train_stage2``.

One code path for every machine: a stage either trains in this process (``launcher: python``,
the CPU default) or re-executes itself under ``accelerate launch`` with a DeepSpeed config
(``launcher: accelerate``, multi-GPU / multi-node); the re-executed children run exactly the
same :func:`stages.training.trainer.train` as the in-process run.

What a run does, module by module:

- ``config``: the stage's params section as a typed object (paths, hyperparameters, launcher).
  ``params.yaml`` holds the 2-core CPU values; GPU values come from recipes (``recipes/gpu-8x.yaml``).
- ``data``: reads ``<data_dir>/{train,validation}.jsonl`` (rows ``{"messages", "tools", "source"}``
  whose values are JSON strings, see docs/design.md), renders each conversation with the
  *tokenizer's* chat template (the one saved by ``edit_tokenizer``; no copy lives here) and takes
  the labels from the template's ``{% generation %}`` spans, so the loss covers exactly what the
  model must learn. Rows that do not parse or render are dropped and counted, never fatal.
- ``model``: loads the input model; optionally only the top N decoder layers plus the embeddings
  train (the CPU budget).
- ``trainer``: trl's ``SFTTrainer`` (padding-free best-fit-decreasing packing, cosine schedule to a
  floor learning rate, optionally DeepSpeed ZeRO), then an atomic save of the final model
  (safetensors + tokenizer + template + ``octupus.json``) in the layout ``AutoModelForCausalLM``
  and vLLM read: a killed save never leaves a half-written model behind.
- ``checkpoints``: checkpoints go to ``checkpoint_dir/run-<key>``, one folder per run (the key
  hashes its inputs, code and hyperparameters; not a DVC output); a run started again resumes from
  its latest complete ``checkpoint-N``, never from another run's, and two experiments keep theirs
  side by side (the two most recently started runs are kept).
- ``curves``: loss, learning rate, grad norm and the final validation loss, written with dvclive.
- ``launcher``: the stages' command line, and the ``accelerate launch`` re-execution.

Importing this package or ``config`` never imports torch, transformers or trl: config errors and
``--help`` are instant.
"""
