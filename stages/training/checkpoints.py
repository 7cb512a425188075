"""Checkpoints and resume: a stage started again continues its own run and never another's.

``checkpoint_dir`` holds one folder per run, ``run-<key>``, where the key hashes the run's
fingerprint (``run_fingerprint.json`` inside: the code, hyperparameters, data and input model the
checkpoints are trained with); the Trainer's ``checkpoint-N`` folders go in it. Two experiments
(``make compare``'s V1 and V2) therefore keep their own checkpoints side by side: switching between
them never removes or resumes the other's. The :data:`KEEP_RUNS` most recently started runs are
kept, older ones removed, so the disk holds a bounded number of runs.

The folder is not a DVC output: DVC never deletes it before a run (what ``persist`` was for), and
a persisted or uncached output turns DVC's run cache off for its stage (``dvc/stage/cache.py``),
which is what let a ``dvc repro`` after ``make compare`` retrain stage 2. The run's dvclive history
lives here too (``curves.py``).
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
KEEP_RUNS = 2  # runs whose checkpoints are kept (the most recently started)
# Set by the launcher for the ranks it starts: the run folder it prepared (ranks do no housekeeping).
RUN_DIR_ENV = "OCTUPUS_RUN_DIR"
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


def _started(run_dir: Path) -> float:
    marker = run_dir / FINGERPRINT_FILE
    return (marker if marker.is_file() else run_dir).stat().st_mtime


def run_dir_of(config: SFTStageConfig, fingerprint: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.checkpoint_dir) / f"run-{key}"


def prepare_checkpoint_dir(config: SFTStageConfig, tool_format: str) -> tuple[Path, Path | None]:
    """This run's checkpoint folder (created) and the checkpoint to resume from in it, if any.

    Other runs' folders stay, up to :data:`KEEP_RUNS` in all; checkpoints left directly in
    ``checkpoint_dir`` by the layout before run folders are removed.
    """
    root = Path(config.checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(config, tool_format)
    run_dir = run_dir_of(config, fingerprint)
    run_dir.mkdir(exist_ok=True)
    (run_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    # The fingerprint file's time says when the run last started (a folder's own time moves with
    # every checkpoint it saves).
    legacy = [p for p in root.iterdir() if _checkpoint_step(p) is not None]
    if legacy:
        log.warning("removing %s (checkpoints of an earlier layout, without their run's fingerprint)",
                    ", ".join(sorted(p.name for p in legacy)))
        for path in legacy:
            shutil.rmtree(path)
    (root / FINGERPRINT_FILE).unlink(missing_ok=True)
    runs = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("run-") and p != run_dir),
                  key=_started, reverse=True)
    for old in runs[KEEP_RUNS - 1:]:
        log.info("removing the checkpoints of an older run: %s", old.name)
        shutil.rmtree(old)
    checkpoint = find_resumable_checkpoint(run_dir)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    return run_dir, checkpoint
