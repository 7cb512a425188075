"""Checkpoints and resume: a stage started again continues its own run and never another's.

``checkpoint_dir`` is a DVC ``persist: true`` folder. Beside the Trainer's ``checkpoint-N``
folders it holds ``run_fingerprint.json``: the code, hyperparameters, data and input model the
checkpoints were trained with. When any of them changed, the old checkpoints are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import toolcall
from stages.training.config import BOOKKEEPING_FIELDS, SFTStageConfig

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_fingerprint.json"
# A change in how rows become tokens, or in how the loss is taken, must not resume a checkpoint
# trained the old way: the training package and the tool-call format it renders with.
CODE_FILES = (*sorted(Path(__file__).parent.glob("*.py")), *toolcall.source_files())


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
    for _step, path in found:
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
    """What must be equal for a checkpoint to be resumed: code, hyperparameters, data and input model."""
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
    for module_file in CODE_FILES:
        _hash_file(module_file, code)
    hyperparameters = config.hyperparameters()
    return {
        "code_sha256": code.hexdigest(),
        "hyperparameters": {k: v for k, v in hyperparameters.items() if k not in BOOKKEEPING_FIELDS},
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


