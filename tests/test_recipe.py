"""Recipes (recipes/*.yaml, stages/recipe.py): V1/V2 as params overrides, applied the way DVC applies them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from stages import recipe
from stages.config import read_params
from stages.filter import FilterConfig
from stages.training.config import Stage2Config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _write(dir_: Path, name: str, body: dict) -> None:
    (dir_ / f"{name}.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")


def test_params_yaml_is_v2() -> None:
    params = read_params(ROOT / "params.yaml")
    assert recipe.apply_overrides(params, recipe.load_recipe("v2", RECIPES)) == params


def test_v1_and_v2_differ_where_the_original_recipes_differ() -> None:
    params = read_params(ROOT / "params.yaml")
    v1 = recipe.apply_overrides(params, recipe.load_recipe("v1", RECIPES))
    v2 = recipe.apply_overrides(params, recipe.load_recipe("v2", RECIPES))
    # Both still validate as the stages' own typed configs.
    for p in (v1, v2):
        FilterConfig.model_validate(p["filter"])
        Stage2Config.model_validate(p["train_stage2"])
    assert (v1["train_stage2"]["tool_format"], v2["train_stage2"]["tool_format"]) == ("v1", "v2")
    assert v1["filter"]["mix"]["stage2"]["toolace"] == 0.0 and v2["filter"]["mix"]["stage2"]["toolace"] == 2.0
    assert v1["filter"]["mix"]["stage2"]["hermes_fc"] == 2.0 and v2["filter"]["mix"]["stage2"]["hermes_fc"] == 4.0
    c1, c2 = v1["train_stage2"], v2["train_stage2"]
    # Same packed-token budget on the CPU, so the comparison is about the recipe and not the compute.
    tokens = [c["max_steps"] * c["max_length"] * c["per_device_batch_size"] * c["gradient_accumulation_steps"]
              for c in (c1, c2)]
    assert tokens[0] == tokens[1]
    # Stage 1 is shared: no recipe touches it, so `make compare` does not retrain it.
    assert v1["train_stage1"] == v2["train_stage1"] == params["train_stage1"]
    assert all(not k.startswith(("train_stage1.", "raw.", "base_model.", "edit_tokenizer."))
               for name in ("v1", "v2") for k in recipe.load_recipe(name, RECIPES))


def test_make_compare_runs_the_default_recipe_first_and_restores_it() -> None:
    """After `make repro` the workspace is V2 (params.yaml), so its experiment must run first to
    rerun nothing (train_stage2 has a `cache: false` output: DVC's run cache cannot restore it
    once V1 has run), and the workspace must end on V2's params again."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    body = makefile.split("\ncompare:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in body.splitlines()[1:] if line.startswith("\t")]
    assert [c.split("stages.recipe ", 1)[1] for c in commands if "stages.recipe exp" in c] == ["exp v2", "exp v1"]
    assert any(c.endswith("dvc exp apply v2") for c in commands)
    applied = next(i for i, c in enumerate(commands) if c.endswith("dvc exp apply v2"))
    assert applied > max(i for i, c in enumerate(commands) if "stages.recipe exp" in c)
    # params.yaml's text is kept before the first experiment and put back after the apply.
    assert commands[0].endswith("stages.recipe params-text save")
    assert commands.index(next(c for c in commands if c.endswith("params-text restore"))) > applied


def test_params_text_survives_a_rewrite_of_the_same_values(tmp_path: Path) -> None:
    """`dvc exp run -S` / `exp apply` write params.yaml back through a YAML dumper (make compare
    left it without comments, flow lists as blocks, null as empty); with the same values the saved
    text comes back, with other values the file is left as it was written."""
    target, saved = tmp_path / "params.yaml", tmp_path / "tmp" / "saved.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    original = target.read_bytes()
    values = read_params(target)
    recipe.save_params_text(target, saved)
    target.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    assert target.read_bytes() != original
    assert recipe.restore_params_text(target, saved)
    assert target.read_bytes() == original and not saved.exists()

    recipe.save_params_text(target, saved)
    v1 = recipe.apply_overrides(values, recipe.load_recipe("v1", RECIPES))
    target.write_text(yaml.safe_dump(v1, sort_keys=False), encoding="utf-8")
    rewritten = target.read_bytes()
    assert not recipe.restore_params_text(target, saved)
    assert target.read_bytes() == rewritten and not saved.exists()
    assert not recipe.restore_params_text(target, saved)  # nothing saved: left alone


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_dvc_applies_the_set_args_to_the_same_params(tmp_path: Path, name: str) -> None:
    """The `-S` arguments, parsed by DVC's own override code, give the params `write` produces."""
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    overrides = recipe.load_recipe(name, RECIPES)
    args = recipe.dvc_set_args(overrides)
    assert args[::2] == ["-S"] * len(overrides)
    apply_overrides(target, args[1::2])
    expected = recipe.apply_overrides(read_params(ROOT / "params.yaml"), overrides)
    assert read_params(target) == expected


def test_string_values_stay_strings_through_dvc(tmp_path: Path) -> None:
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump({"a": {"b": "x", "c": 1, "d": None, "e": [1]}}), encoding="utf-8")
    overrides = {"a.b": "8", "a.c": "null", "a.d": "it's", "a.e": ["p", 2, True]}
    apply_overrides(target, recipe.dvc_set_args(overrides)[1::2])
    assert read_params(target) == {"a": {"b": "8", "c": "null", "d": "it's", "e": ["p", 2, True]}}


def test_extends_resolves_parent_first(tmp_path: Path) -> None:
    _write(tmp_path, "base", {"description": "b", "extends": None, "set": {"x.a": 1, "x.b": 2}})
    _write(tmp_path, "child", {"description": "c", "extends": "base", "set": {"x.b": 3}})
    assert recipe.load_recipe("child", tmp_path) == {"x.a": 1, "x.b": 3}


def test_extends_a_list_applies_the_parents_in_order(tmp_path: Path) -> None:
    _write(tmp_path, "data", {"description": "d", "extends": None, "set": {"x.a": 1, "x.b": 1}})
    _write(tmp_path, "machine", {"description": "m", "extends": None, "set": {"x.b": 2, "x.c": 2}})
    _write(tmp_path, "both", {"description": "b", "extends": ["data", "machine"], "set": {"x.c": 3}})
    _write(tmp_path, "swapped", {"description": "s", "extends": ["machine", "data"], "set": {}})
    assert recipe.load_recipe("both", tmp_path) == {"x.a": 1, "x.b": 2, "x.c": 3}
    assert recipe.load_recipe("swapped", tmp_path) == {"x.a": 1, "x.b": 1, "x.c": 2}


@pytest.mark.parametrize("bodies, message", [
    ({"a": {"description": "a", "extends": "b"}, "b": {"description": "b", "extends": "a"}}, "cycle"),
    ({"a": {"description": "a", "extends": "missing"}}, "no recipe 'missing'"),
    ({"a": {"description": "a", "sett": {"x": 1}}}, "keys description, extends, set"),
    ({"a": {"extends": None, "set": {}}}, "'description'"),
    ({"a": {"description": "a", "set": [1]}}, "'set' must map"),
    ({"a": {"description": "a", "extends": {"b": 1}}}, "'extends' is a recipe name"),
    ({"a": {"description": "a", "extends": ["b"]}, "b": {"description": "b", "extends": ["c", "a"]},
      "c": {"description": "c"}}, "cycle"),
])
def test_bad_recipes_fail_loudly(tmp_path: Path, bodies: dict, message: str) -> None:
    for name, body in bodies.items():
        _write(tmp_path, name, body)
    with pytest.raises(recipe.RecipeError, match=message):
        recipe.load_recipe("a", tmp_path)


def test_unknown_param_key_is_refused() -> None:
    with pytest.raises(recipe.RecipeError, match="params has no 'train_stage2.max_lenght'"):
        recipe.apply_overrides({"train_stage2": {"max_length": 1}}, {"train_stage2.max_lenght": 2})


def test_cli_write_and_error_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "p.yaml"
    assert recipe.main(["write", "v1", "--out", str(out)]) == 0
    assert read_params(out)["train_stage2"]["tool_format"] == "v1"
    assert recipe.main(["show", "nope"]) == 2
    assert "no recipe 'nope'" in capsys.readouterr().err
    assert recipe.experiment_command("v1", {"a.b": 1}, ["--temp"]) == ["dvc", "exp", "run", "-n", "v1", "-S", "a.b=1",
                                                                       "--temp"]
