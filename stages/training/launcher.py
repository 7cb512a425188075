"""How a training stage runs: its command line, and training here or under ``accelerate launch``.

``launcher: python`` trains in this process. ``launcher: accelerate`` re-executes the same stage
module under ``accelerate launch`` (DeepSpeed ZeRO, multi-GPU / multi-node); the children see
:data:`LAUNCHED_ENV` and train instead of launching again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from stages.config import ConfigError, load_section, log_config, setup_logging, stage_argparser
from stages.training.checkpoints import RUN_DIR_ENV, prepare_checkpoint_dir
from stages.training.config import SFTStageConfig, tool_format_of
from stages.training.trainer import train

log = logging.getLogger(__name__)

# Set in the children of `accelerate launch` so they train instead of launching again.
LAUNCHED_ENV = "OCTUPUS_SFT_LAUNCHED"


def accelerate_command(config: SFTStageConfig, module: str, params_path: str) -> list[str]:
    """The ``accelerate launch`` argv that re-runs ``module`` on every process of the cluster."""
    acc = config.accelerate
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        acc.config_file,
        "--num_machines",
        str(acc.num_machines),
        "--num_processes",
        str(acc.num_processes),
        "--machine_rank",
        str(acc.machine_rank),
    ]
    if acc.main_process_ip is not None:
        argv += ["--main_process_ip", acc.main_process_ip]
    if acc.main_process_port is not None:
        argv += ["--main_process_port", str(acc.main_process_port)]
    return [*argv, "--module", module, "--params", params_path]



def stage_main(stage: str, config_cls: type[SFTStageConfig], doc: str, argv: list[str] | None) -> None:
    """Command line of both stages: parse, load the params section, run; config errors exit cleanly."""
    args = stage_argparser(doc.strip().splitlines()[0]).parse_args(argv)
    setup_logging()
    try:
        config = load_section(stage, config_cls, args.params)
        run_stage(config, stage, f"stages.{stage}", args.params, tool_format_of(config))
    except ConfigError as exc:
        log.error("%s: %s", stage, exc)
        raise SystemExit(2) from exc


def run_stage(config: SFTStageConfig, stage: str, module: str, params_path: str, tool_format: str) -> None:
    """Entry point of both stages: launch according to ``config.launcher``, or train here."""
    log_config(stage, config)
    if config.launcher == "accelerate" and os.environ.get(LAUNCHED_ENV) != "1":
        # Housekeeping happens once, here, not racily in every rank.
        run_dir, _ = prepare_checkpoint_dir(config, tool_format)
        argv = accelerate_command(config, module, params_path)
        log.info("launching: %s", " ".join(argv))
        env = {**os.environ, LAUNCHED_ENV: "1", RUN_DIR_ENV: str(run_dir)}
        completed = subprocess.run(argv, env=env, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"{stage}: accelerate launch exited with status {completed.returncode}")
        return
    train(config, tool_format, housekeeping=os.environ.get(LAUNCHED_ENV) != "1")

