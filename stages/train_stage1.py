"""Stage ``train_stage1``: chat SFT of ``models/edited`` on ``data/filtered/stage1`` -> ``models/stage1``.

    python -m stages.train_stage1 [--params params.yaml]

With ``train_stage1.launcher: accelerate`` the same command re-executes itself under
``accelerate launch`` (DeepSpeed, multi-GPU / multi-node; see ``stages/configs/``). The training
itself is ``stages/training/``.
"""

from __future__ import annotations

from stages.training.config import Stage1Config
from stages.training.launcher import stage_main


def main(argv: list[str] | None = None) -> None:
    stage_main("train_stage1", Stage1Config, __doc__, argv)


if __name__ == "__main__":
    main()
