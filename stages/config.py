"""Typed stage configuration read from ``params.yaml``.

Every stage owns one top-level section of ``params.yaml`` and reads only that section into a
pydantic model. The models forbid unknown keys and declare no defaults unless a default is truly
harmless, so a typo or a forgotten key fails loudly before any work starts instead of silently
running with a value nobody chose.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_PARAMS = Path("params.yaml")

log = logging.getLogger(__name__)


class StrictModel(BaseModel):
    """Base for every config object: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A params section is missing, has unknown keys, or has values of the wrong type."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats the YAML 1.2 way.

    PyYAML (YAML 1.1) reads ``2e-05`` as a string; DVC (ruamel, YAML 1.2) writes floats that way
    when `dvc exp run -S` sets them, so without this a recipe's learning rate would come back as text.
    """


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_params(path: str | os.PathLike[str] = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=ParamsLoader) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_section(section: str, model: type[T], path: str | os.PathLike[str] = DEFAULT_PARAMS) -> T:
    """Read ``section`` of the params file into ``model``; raise :class:`ConfigError` on any problem."""
    data = read_params(path)
    if section not in data:
        raise ConfigError(f"{path}: missing section '{section}'")
    try:
        return model.model_validate(data[section])
    except ValidationError as exc:
        raise ConfigError(f"{path}: section '{section}' is invalid:\n{exc}") from exc


def stage_argparser(description: str) -> argparse.ArgumentParser:
    """The command line every stage shares: ``python -m stages.<name> [--params FILE]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    return parser


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("OCTUPUS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def log_config(stage: str, config: BaseModel) -> None:
    """Log every resolved value at start so a run's log says exactly what it ran with."""
    log.info("%s config: %s", stage, json.dumps(config.model_dump(mode="json"), sort_keys=True))
