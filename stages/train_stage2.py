"""Stage ``train_stage2``: chat + function-calling SFT of ``models/stage1`` on ``data/filtered/stage2``.

    python -m stages.train_stage2 [--params params.yaml]

Writes ``models/stage2``. ``train_stage2.tool_format`` (``v1`` | ``v2``) is passed to the chat
template. With ``train_stage2.launcher: accelerate`` the same command re-executes itself under
``accelerate launch`` (DeepSpeed, multi-GPU / multi-node; see ``stages/configs/``). The training
itself is ``stages/training/``.
"""

from __future__ import annotations

from stages.training.config import Stage2Config
from stages.training.launcher import stage_main


def main(argv: list[str] | None = None) -> None:
    stage_main("train_stage2", Stage2Config, __doc__, argv)


if __name__ == "__main__":
    main()
