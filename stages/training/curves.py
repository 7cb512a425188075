"""Training curves and the run summary, written with dvclive.

dvclive writes into the run's own folder (``checkpoints/<stage>/run-<key>/dvclive``), which a
resumed run continues; at the end the folder is copied to ``dvclive/<stage>/``, the stage's DVC
metrics and plots. Those outputs are therefore not ``persist``: a persisted output turns DVC's
run cache off for its stage (``dvc/stage/cache.py``, ``_can_hash``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

TRAIN_CURVES = frozenset({"loss", "learning_rate", "grad_norm", "mean_token_accuracy"})
EVAL_CURVES = frozenset({"eval_loss", "eval_mean_token_accuracy"})


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


def _drop_torn_summary(dvclive_dir: Path) -> None:
    """A run killed while dvclive rewrote its summary (``metrics.json``, not written atomically)
    leaves it empty or cut, and ``Live(resume=True)`` fails reading it. The summary is derived:
    the next logged step writes it again, so a torn one is removed rather than read."""
    summary = dvclive_dir / "metrics.json"
    try:
        json.loads(summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary.unlink()


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
                    _drop_torn_summary(Path(dvclive_dir))
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




def publish_curves(live_dir: Path, output_dir: Path) -> None:
    """Copy the run's finished curves and summary to the stage's output folder (replaced whole)."""
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(live_dir, staging)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)
