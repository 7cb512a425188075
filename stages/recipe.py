"""Recipes: named sets of params overrides (``recipes/<name>.yaml``), for DVC experiments.

A recipe file is::

    description: what the recipe is
    extends: another-recipe        # or a list of recipes, applied in order, or null; they apply first
    set:
      train_stage2.tool_format: v1   # dotted path into params.yaml -> new value
      ...

``params.yaml`` stays the single source of truth: a recipe only names values that differ, and
every key it sets must already exist there (a typo fails loudly instead of adding a key that no
stage reads). Two ways to use one::

    python -m stages.recipe exp v1                   # dvc exp run -n v1 -S key=value ...
    python -m stages.recipe args v1                  # just the `-S key=value` arguments, shell-quoted
    python -m stages.recipe write gpu-8x --out params.gpu.yaml   # a merged params file

``dvc exp run -S`` and ``dvc exp apply`` write params.yaml back through a YAML dumper, which drops
its comments and layout even where every value is the same. ``make compare`` therefore keeps the
file's text (``params-text save``) and puts it back at the end (``params-text restore``) when the
values are those it started from.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from stages.config import DEFAULT_PARAMS, ConfigError, read_params

RECIPES_DIR = Path("recipes")
# Where `params-text save` keeps params.yaml's text (DVC's own scratch folder, ignored by git).
SAVED_PARAMS_TEXT = Path(".dvc/tmp/params-before-compare.yaml")

log = logging.getLogger(__name__)


class RecipeError(ConfigError):
    """A recipe is missing, malformed, cyclic, or sets a key params.yaml does not have."""


def recipe_path(name: str, recipes_dir: Path = RECIPES_DIR) -> Path:
    return recipes_dir / f"{name}.yaml"


def available(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    return sorted(p.stem for p in recipes_dir.glob("*.yaml"))


def load_recipe(name: str, recipes_dir: Path = RECIPES_DIR, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flattened overrides of ``name`` (``extends`` resolved in order, the recipe's own values last)."""
    if name in _seen:
        raise RecipeError(f"recipe cycle: {' -> '.join(_seen + (name,))}")
    path = recipe_path(name, recipes_dir)
    if not path.is_file():
        raise RecipeError(f"no recipe '{name}' ({path}); available: {', '.join(available(recipes_dir)) or 'none'}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) - {"description", "extends", "set"}:
        raise RecipeError(f"{path}: a recipe is a mapping with keys description, extends, set")
    if not isinstance(data.get("description"), str) or not data["description"].strip():
        raise RecipeError(f"{path}: 'description' (text) is required")
    overrides = data.get("set") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and k for k in overrides):
        raise RecipeError(f"{path}: 'set' must map dotted param keys to values")
    parents = data.get("extends")
    if parents is None:
        parents = []
    elif isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise RecipeError(f"{path}: 'extends' is a recipe name, a list of them, or null")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged.update(load_recipe(parent, recipes_dir, _seen + (name,)))
    merged.update(overrides)
    return merged


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``params`` with each dotted key set; every key must already exist."""
    result = copy.deepcopy(params)
    for dotted, value in overrides.items():
        node: Any = result
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: depth + 1])
                raise RecipeError(f"recipe key '{dotted}': params has no '{where}'")
            if depth == len(parts) - 1:
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
    return result


def _hydra_value(value: Any) -> str:
    """A value in the override syntax `dvc exp run -S` parses (Hydra's: JSON-like literals)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        # Hydra reads 1e-06 as a string: its floats need a decimal point before the exponent.
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(value, str):
        # Quoted, so that values like "v1", "8" or "null" stay strings.
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    raise RecipeError(f"cannot express {type(value).__name__} value {value!r} as a dvc -S override")


def _is_null(params: dict[str, Any] | None, dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node is None


def dvc_set_args(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> list[str]:
    """``-S`` arguments for the overrides; ``base`` (the params they apply to) tells which mapping
    values replace a null."""
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict) and not _is_null(base, key):
            # Hydra merges `key={...}` into the existing mapping; a recipe means "this mapping":
            # delete the key, then add it back whole. (A null cannot be deleted; it is simply replaced.)
            args += ["-S", f"~{key}", "-S", f"+{key}={_hydra_value(value)}"]
        else:
            args += ["-S", f"{key}={_hydra_value(value)}"]
    return args


def experiment_command(name: str, overrides: dict[str, Any], extra: list[str],
                       base: dict[str, Any] | None = None) -> list[str]:
    return ["dvc", "exp", "run", "-n", name, *dvc_set_args(overrides, base), *extra]


def run_experiment(name: str, overrides: dict[str, Any], extra: list[str], base: dict[str, Any] | None = None) -> int:
    """`dvc exp run` the recipe as experiment ``name``, replacing an earlier experiment of that name."""
    listed = subprocess.run(["dvc", "exp", "list", "--name-only"], capture_output=True, text=True, check=False)
    if name in listed.stdout.split():
        log.info("replacing the earlier experiment '%s'", name)
        subprocess.run(["dvc", "exp", "remove", name], check=True)
    cmd = experiment_command(name, overrides, extra, base)
    log.info("running: %s", shlex.join(cmd))
    return subprocess.run(cmd, check=False).returncode


def save_params_text(params: Path, saved: Path = SAVED_PARAMS_TEXT) -> None:
    """Keep the params file's text as it is, comments and layout included."""
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(params.read_bytes())


def restore_params_text(params: Path, saved: Path = SAVED_PARAMS_TEXT) -> bool:
    """Put the saved text back when the file holds the same values as it (DVC rewrote only the
    layout); otherwise leave the file as it is. Either way the saved copy is removed. True when
    the text was put back."""
    if not saved.is_file():
        log.warning("no saved text of %s (%s): left as it is", params, saved)
        return False
    before = saved.read_bytes()
    same = yaml.safe_load(before) == yaml.safe_load(params.read_bytes())
    if same:
        params.write_bytes(before)
        log.info("%s: its own text put back (the values are the ones it started from)", params)
    else:
        log.warning("%s: its values differ from the saved text's: left as DVC wrote it", params)
    saved.unlink()
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="base params file (default: params.yaml)")
    parser.add_argument("--recipes-dir", default=str(RECIPES_DIR))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the available recipes")
    p_show = sub.add_parser("show", help="the recipe's flattened overrides as JSON")
    p_show.add_argument("name")
    p_args = sub.add_parser("args", help="`-S key=value` arguments for `dvc exp run`, shell-quoted")
    p_args.add_argument("name")
    p_exp = sub.add_parser("exp", help="run the recipe as the DVC experiment of the same name")
    p_exp.add_argument("name")
    p_exp.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc exp run` arguments")
    p_write = sub.add_parser("write", help="write params with the recipe applied")
    p_write.add_argument("name")
    p_write.add_argument("--out", required=True)
    p_text = sub.add_parser("params-text", help="keep the params file's text around `dvc exp` runs (make compare)")
    p_text.add_argument("action", choices=["save", "restore"])
    args = parser.parse_args(argv)
    recipes_dir = Path(args.recipes_dir)
    if args.command == "params-text":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        if args.action == "save":
            save_params_text(Path(args.params))
        else:
            restore_params_text(Path(args.params))
        return 0
    try:
        if args.command == "list":
            for name in available(recipes_dir):
                desc = yaml.safe_load(recipe_path(name, recipes_dir).read_text(encoding="utf-8")).get("description", "")
                print(f"{name}: {' '.join(str(desc).split())}")
            return 0
        overrides = load_recipe(args.name, recipes_dir)
        # Checked against the base params in every mode, so `args` never hands DVC a key that does not exist.
        base = read_params(args.params)
        merged = apply_overrides(base, overrides)
        if args.command == "show":
            print(json.dumps(overrides, indent=2, ensure_ascii=False))
        elif args.command == "exp":
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            return run_experiment(args.name, overrides, args.dvc_args, base)
        elif args.command == "args":
            print(" ".join(shlex.quote(a) for a in dvc_set_args(overrides, base)))
        else:
            Path(args.out).write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding="utf-8")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
