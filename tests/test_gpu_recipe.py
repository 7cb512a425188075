"""Dry run of the GPU recipes (recipes/gpu-8x.yaml, gpu-multinode.yaml, gpu-8x-v1.yaml): no GPU needed.

Each recipe is applied to params.yaml; every section is then loaded through the typed config of
the stage that reads it, exactly as the stage does, and the commands the stages would run are built
with the stages' own functions: `accelerate launch` for both training stages (parsed by accelerate's
own argument parser, its config file loaded by accelerate) and the evaluation server (parsed by
`python -m serve`'s parser). The asserts are the recipe's promises: 8 processes a node, ZeRO-2, bf16,
the original's hyperparameters, the hub as data and model source, vLLM for evaluation on every
offline BFCL category.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.config import StrictModel, load_section, read_params
from stages.recipe import apply_overrides, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
GPU_RECIPES = ["gpu-8x", "gpu-multinode", "gpu-8x-v1"]
HUB_DATASETS = {
    "hermes_fc": "NousResearch/hermes-function-calling-v1",
    "toolace": "Team-ACE/ToolACE",
    "fc_zh_hard": "hqfx/fc_zh_hard",
    "openhermes": "teknium/OpenHermes-2.5",
    "wildchat": "allenai/WildChat",
    "apigen_mt": "Salesforce/APIGen-MT-5k",
}
# The original project's recipe (../shared/facts.md): lr 2e-5 cosine to 1e-6, 50 warmup steps,
# ZeRO-2, bf16; stage 1: 2 epochs at 4096 tokens; stage 2: 1 epoch at 8192 tokens, clip 3.
ORIGINAL = {
    "train_stage1": {"learning_rate": 2e-5, "min_learning_rate": 1e-6, "warmup_steps": 50, "num_train_epochs": 2,
                     "max_length": 4096},
    "train_stage2": {"learning_rate": 2e-5, "min_learning_rate": 1e-6, "warmup_steps": 50, "num_train_epochs": 1,
                     "max_length": 8192, "max_grad_norm": 3.0, "per_device_batch_size": 2},
}
# V1's stage 2 in the original: 2 epochs, batch 4, clip 10, length 4096 (the rest as V2).
ORIGINAL_V1 = {**ORIGINAL, "train_stage2": {**ORIGINAL["train_stage2"], "num_train_epochs": 2, "max_length": 4096,
                                             "max_grad_norm": 10.0, "per_device_batch_size": 4}}
EXPECTED = {"gpu-8x": ORIGINAL, "gpu-multinode": ORIGINAL, "gpu-8x-v1": ORIGINAL_V1}


def section_configs() -> dict[str, type[StrictModel]]:
    from stages.base_model import BaseModelConfig
    from stages.data_card import DataCardConfig
    from stages.edit_tokenizer import EditTokenizerConfig
    from stages.evaluation.config import EvaluateConfig
    from stages.export_gguf import ExportConfig
    from stages.filter import FilterConfig
    from stages.raw import RawConfig
    from stages.reanswer import ReanswerConfig
    from stages.training.config import Stage1Config, Stage2Config

    return {"raw": RawConfig, "filter": FilterConfig, "reanswer": ReanswerConfig, "base_model": BaseModelConfig,
            "edit_tokenizer": EditTokenizerConfig, "train_stage1": Stage1Config, "train_stage2": Stage2Config,
            "evaluate": EvaluateConfig, "data_card": DataCardConfig, "export_gguf": ExportConfig}


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stages resolve config-file paths (DeepSpeed, accelerate) from the repository root, as DVC runs them.
    monkeypatch.chdir(REPO)


def merged_params(name: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    merged = apply_overrides(read_params(REPO / "params.yaml"), load_recipe(name, RECIPES))
    path = tmp_path / f"params.{name}.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return merged, path


def load_all(path: Path) -> dict[str, Any]:
    """Every section through its stage's config class, the way each stage loads it."""
    configs = section_configs()
    sections = set(read_params(path))
    assert sections <= set(configs), f"sections without a config check here: {sorted(sections - set(configs))}"
    return {section: load_section(section, model, path) for section, model in configs.items()}


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_recipe_validates_and_sets_the_gpu_path(name: str, tmp_path: Path) -> None:
    _, path = merged_params(name, tmp_path)
    cfg = load_all(path)

    for source, dataset in HUB_DATASETS.items():
        origin = cfg["raw"].sources[source].origin
        assert origin.type == "hub" and origin.dataset == dataset and origin.split == "train"
        assert origin.revision  # `main` until pinned: the key is there to pin
        assert origin.max_rows is None
    assert cfg["raw"].sources["hermes_fc"].origin.config == "func_calling"
    # Multi-turn sessions: the real APIGen-MT-5k and the project's synthetic environment sessions, both
    # read as the apigen_mt kind and both in stage 2's mix.
    assert cfg["raw"].sources["apigen_mt"].origin.data_file == "apigen-mt_5k.json"
    sessions = cfg["raw"].sources["env_sessions"]
    assert sessions.kind == cfg["raw"].sources["apigen_mt"].kind == "apigen_mt" and sessions.origin.type == "synthetic"
    assert cfg["filter"].mix.stage2["env_sessions"] > 0 and cfg["filter"].mix.stage2["apigen_mt"] > 0
    # Stage 1 trains on OpenHermes-2.5 answered again by Qwen2.5-72B-Instruct, as the original did.
    teacher = cfg["reanswer"].teacher
    assert teacher is not None and teacher.model == "Qwen/Qwen2.5-72B-Instruct"
    assert cfg["reanswer"].sources == ["openhermes"] and cfg["reanswer"].output_dir == cfg["train_stage1"].data_dir
    assert len(teacher.endpoints) >= 2 and all(url.endswith("/v1") for url in teacher.endpoints)
    assert teacher.concurrency >= 64 and teacher.max_retries > 0 and not teacher.keep_truncated
    assert cfg["base_model"].source == "hub" and cfg["base_model"].hub.model_id == "Qwen/Qwen2.5-7B"
    assert len(cfg["base_model"].hub.revision) == 40  # a pinned commit, not a branch

    for stage, expected in EXPECTED[name].items():
        stage_cfg = cfg[stage]
        assert stage_cfg.launcher == "accelerate"
        for key, value in expected.items():
            assert getattr(stage_cfg, key) == pytest.approx(value), (stage, key)
        assert stage_cfg.lr_scheduler == "cosine_with_min_lr"
        assert stage_cfg.bf16 and stage_cfg.dtype == "bfloat16"
        assert stage_cfg.trainable_top_layers is None and stage_cfg.max_train_rows is None
        assert stage_cfg.max_steps is None
        ds = json.loads(Path(stage_cfg.deepspeed).read_text())
        assert ds["zero_optimization"]["stage"] == 2
        assert ds["bf16"]["enabled"] in (True, "auto")

    evaluate = cfg["evaluate"]
    assert evaluate.server.backend == "vllm"
    from stages.evaluation.categories import INTERNET_CATEGORIES, SCORING_CATEGORIES

    offline = [c for c in SCORING_CATEGORIES if c not in INTERNET_CATEGORIES]
    assert evaluate.categories == {c: "all" for c in offline}


@pytest.mark.parametrize(("name", "machines"), [("gpu-8x", 1), ("gpu-multinode", 2), ("gpu-8x-v1", 1)])
def test_accelerate_launch_commands(name: str, machines: int, tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    from stages.training.config import Stage1Config, Stage2Config
    from stages.training.launcher import accelerate_command

    _, path = merged_params(name, tmp_path)
    for stage, model in (("train_stage1", Stage1Config), ("train_stage2", Stage2Config)):
        config = load_section(stage, model, path)
        argv = accelerate_command(config, f"stages.{stage}", str(path))
        assert argv[1:3] == ["-m", "accelerate.commands.launch"]
        args = launch_command_parser().parse_args(argv[3:])  # accelerate's own parser accepts it
        assert args.num_processes == 8 * machines and args.num_machines == machines and args.machine_rank == 0
        assert args.module and args.training_script == f"stages.{stage}"
        assert args.training_script_args == ["--params", str(path)]

        launch_config = load_config_from_file(args.config_file)  # accelerate's own config loader
        assert launch_config.distributed_type == "DEEPSPEED" and not launch_config.use_cpu
        ds_path = Path(launch_config.deepspeed_config["deepspeed_config_file"])
        assert ds_path.is_file() and ds_path.resolve() == Path(config.deepspeed).resolve()
        assert json.loads(ds_path.read_text())["zero_optimization"]["stage"] == 2
        if machines > 1:
            assert launch_config.rdzv_backend == "static"
            assert launch_config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
            # Placeholders a user must fill, passed on the command line (they override the file's).
            assert args.main_process_ip == "MAIN-NODE-IP-TO-FILL" and args.main_process_port == 29500
        else:
            assert args.main_process_ip is None


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_evaluation_server_command_is_vllm(name: str, tmp_path: Path) -> None:
    from serve.__main__ import build_parser
    from stages.evaluation.config import load_config
    from stages.evaluation.server import server_command

    _, path = merged_params(name, tmp_path)
    config, entry = load_config(path, "stage2")
    argv = server_command(entry, config.server, 8123, config.api_model_name, "key")
    assert argv[1:3] == ["-m", "serve"]
    args = build_parser().parse_args(argv[3:])  # the server's own parser accepts every flag
    assert args.backend == "vllm" and args.format == "octupus" and args.model == "models/stage2"
    assert args.tensor_parallel_size == 1 and args.max_context == 32768 and args.threads is None
    assert args.default_max_tokens == config.server.max_output_tokens
    assert args.default_max_text_tokens == 0  # text runs to the cap on GPUs, as the original's


@pytest.mark.parametrize("stage", ["train_stage1", "train_stage2"])
def test_gpu_8x_states_every_hyperparameter(stage: str) -> None:
    """No CPU default of params.yaml reaches a GPU run: the recipe sets each training value itself."""
    from stages.training.config import TrainHyperparameters

    overrides = load_recipe("gpu-8x", RECIPES)
    missing = [k for k in TrainHyperparameters.model_fields if f"{stage}.{k}" not in overrides]
    assert not missing, missing


def test_gpu_8x_v1_is_v1_data_on_the_gpu_8x_machine() -> None:
    params = read_params(REPO / "params.yaml")
    v1 = apply_overrides(params, load_recipe("v1", RECIPES))
    gpu = apply_overrides(params, load_recipe("gpu-8x", RECIPES))
    gpu_v1 = apply_overrides(params, load_recipe("gpu-8x-v1", RECIPES))
    # v1's mix at the original's values: on the CPU fc_zh_hard runs at a quarter (V2 1.0, V1 0.5).
    # Multi-turn sessions are the GPU machine's (gpu-8x), for V1 as for V2.
    v1_mix = {**v1["filter"]["mix"], "stage2": {**v1["filter"]["mix"]["stage2"], "fc_zh_hard": 2.0,
                                                "env_sessions": gpu["filter"]["mix"]["stage2"]["env_sessions"]}}
    assert gpu_v1["filter"] == {**gpu["filter"], "mix": v1_mix}
    assert gpu["filter"]["mix"]["stage2"]["fc_zh_hard"] == 4.0 and params["filter"]["mix"]["stage2"]["fc_zh_hard"] == 1.0
    assert gpu_v1["train_stage2"]["tool_format"] == "v1"
    assert {k: v for k, v in gpu_v1.items() if k not in ("filter", "train_stage2")} == {
        k: v for k, v in gpu.items() if k not in ("filter", "train_stage2")}


def test_multinode_extends_8x_and_changes_only_the_topology() -> None:
    single, multi = load_recipe("gpu-8x", RECIPES), load_recipe("gpu-multinode", RECIPES)
    changed = {k for k in multi if multi[k] != single.get(k)}
    assert changed and all(".accelerate." in k for k in changed), sorted(changed)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train_stage1", "train_stage2"])
def test_trainer_resolves_deepspeed_zero2_with_the_original_hyperparameters(stage: str, tmp_path: Path) -> None:
    """trl's SFTConfig fills DeepSpeed's `auto` values from the recipe (imports deepspeed: ~30 s)."""
    from stages.training.config import Stage1Config, Stage2Config
    from stages.training.trainer import build_sft_config

    _, path = merged_params("gpu-8x", tmp_path)
    config = load_section(stage, Stage1Config if stage == "train_stage1" else Stage2Config, path)
    args = build_sft_config(config, eval_enabled=True)
    ds = args.hf_deepspeed_config.config
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True
    assert ds["train_micro_batch_size_per_gpu"] == config.per_device_batch_size
    assert ds["gradient_accumulation_steps"] == config.gradient_accumulation_steps
    assert ds["gradient_clipping"] == pytest.approx(config.max_grad_norm)
    assert args.learning_rate == pytest.approx(2e-5) and args.warmup_steps == 50
    assert args.lr_scheduler_kwargs["min_lr_rate"] == pytest.approx(1e-6 / 2e-5)


def test_dvc_set_args_give_the_same_params_as_write(tmp_path: Path) -> None:
    from dvc.utils.hydra import apply_overrides as dvc_apply

    from stages.recipe import dvc_set_args

    merged, _ = merged_params("gpu-8x", tmp_path)
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    args = dvc_set_args(load_recipe("gpu-8x", RECIPES), read_params(REPO / "params.yaml"))
    dvc_apply(str(target), args[1::2])
    assert read_params(target) == merged


# ----------------------------------------------------------------------------- the one GPU install

# What a recipe setting needs installed, by distribution name.
BACKEND_DISTRIBUTION = {"vllm": "vllm", "transformers": "transformers"}
ATTENTION_DISTRIBUTION = {"flash_attention_2": "flash-attn", "sdpa": None, "eager": None}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def documented_gpu_install() -> tuple[set[str], list[str]]:
    """What `make setup-gpu` installs (dry run, `make -n`): the distributions its pip commands name,
    the project's extras expanded from pyproject.toml, and its other commands."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dry = subprocess.run(["make", "-n", "-B", "setup-gpu"], cwd=REPO, capture_output=True, text=True, check=True)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installed: set[str] = set()
    others = []
    for line in dry.stdout.splitlines():
        words = shlex.split(line) if not line.startswith("make") else []
        if "pip" in " ".join(words[:1]) and words[1:2] == ["install"]:
            args = iter(words[2:])
            for arg in args:
                if arg in ("-c", "--constraint"):
                    next(args)
                elif arg == "-e":
                    extras = re.fullmatch(r"\.\[(.*)\]", next(args))
                    assert extras, line
                    for req in project["dependencies"] + [r for e in extras.group(1).split(",")
                                                          for r in project["optional-dependencies"][e]]:
                        installed.add(canonical(Requirement(req).name))
                elif not arg.startswith("-"):
                    installed.add(canonical(Requirement(arg).name))
        elif words:
            others.append(line)
    return installed, others


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_the_documented_gpu_install_provides_what_the_recipe_runs(name: str, tmp_path: Path) -> None:
    _, path = merged_params(name, tmp_path)
    cfg = load_all(path)
    installed, others = documented_gpu_install()
    assert BACKEND_DISTRIBUTION[cfg["evaluate"].server.backend] in installed  # vLLM for the evaluation
    for stage in ("train_stage1", "train_stage2"):
        attention = ATTENTION_DISTRIBUTION[cfg[stage].attn_implementation]
        assert attention is None or attention in installed, (stage, attention)
        if cfg[stage].deepspeed:
            assert "deepspeed" in installed
        if cfg[stage].launcher == "accelerate":
            assert "accelerate" in installed
    assert "bash scripts/bfcl_venv.sh" in others  # bfcl-eval's own virtualenv, which the evaluation runs


def test_readme_and_makefile_document_one_gpu_install() -> None:
    """`make setup-gpu` is the GPU install everywhere it is described; no second way is left."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    gpu_section = readme[readme.index("## GPU recipe"):]
    assert "make setup-gpu" in gpu_section.split("```bash", 1)[1].split("```", 1)[0]
    for text in (readme, makefile):
        assert "EXTRAS=dev,gpu" not in text and "setup CONSTRAINTS=" not in text
        assert not re.search(r"pip install (-\S+ )*(vllm|flash-attn)", text)
