"""Stages train_stage1 / train_stage2 (stages/training/) on a tiny random model, CPU only.

The model directory comes from the ``tiny_model_dir`` fixture (tests/conftest.py): a saved tiny
model whose tokenizer carries the project's special tokens and chat template, exactly what
``edit_tokenizer`` writes. Data rows are written here in the ``data/filtered`` schema.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.config import ConfigError, load_section
from stages.training import checkpoints, data, launcher
from stages.training.config import Stage1Config, Stage2Config
from toolcall.chat_template import render_assistant
from toolcall.messages import canonicalize_messages
from toolcall.metadata import METADATA_FILE

REPO = Path(__file__).resolve().parents[1]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_conversation(city: str) -> list[dict[str, Any]]:
    """System, user, two parallel calls, two results, a text answer: every kind of turn."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Weather and time in {city}?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("c1", "get_weather", {"city": city}), call("c2", "get_time", {"city": city})],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "c2", "content": '{"time": "10:00"}'},
        {"role": "assistant", "content": f"It is 21 degrees and 10:00 in {city}."},
    ]


def chat_conversation(topic: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"Tell me about {topic}."},
        {"role": "assistant", "content": f"{topic} is a nice place with sunny weather."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ]


def filtered_row(messages: list[dict[str, Any]], tools: list[dict[str, Any]], source: str) -> str:
    return json.dumps(
        {"messages": json.dumps(messages), "tools": json.dumps(tools), "source": source}, ensure_ascii=False
    )


def write_data(data_dir: Path, rows: int, bad_lines: list[str] | None = None) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    cities = ["Paris", "Rome", "Oslo", "Lima", "Kyiv"]
    lines = []
    for i in range(rows):
        city = cities[i % len(cities)]
        if i % 2:
            lines.append(filtered_row(tool_conversation(city), [WEATHER_TOOL, TIME_TOOL], "hermes_fc"))
        else:
            lines.append(filtered_row(chat_conversation(city), [], "openhermes"))
    (data_dir / "train.jsonl").write_text("\n".join([*lines, *(bad_lines or [])]) + "\n", encoding="utf-8")
    (data_dir / "validation.jsonl").write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    return data_dir


def cpu_hyperparameters(**overrides: Any) -> dict[str, Any]:
    values = {
        "learning_rate": 3.0e-3,
        "min_learning_rate": 1.0e-4,
        "lr_scheduler": "cosine_with_min_lr",
        "warmup_steps": 1,
        "num_train_epochs": 1,
        "max_steps": 12,
        "max_length": 512,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_grad_norm": 1.0,
        "weight_decay": 0.0,
        "bf16": False,
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "gradient_checkpointing": False,
        "deepspeed": None,
        "trainable_top_layers": None,
        "max_train_rows": None,
        "drop_system_prompt": 0.0,
        "decision_weight": 1.0,
        "max_eval_rows": 4,
        "eval_steps": None,
        "logging_steps": 1,
        "save_steps": 4,
        "save_total_limit": 2,
        "seed": 7,
    }
    values.update(overrides)
    return values


def stage_section(tmp_path: Path, model_dir: Path, data_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "model": str(model_dir),
        "data_dir": str(data_dir),
        "output_dir": str(tmp_path / "models" / "stage2"),
        "checkpoint_dir": str(tmp_path / "checkpoints" / "stage2"),
        "dvclive_dir": str(tmp_path / "dvclive" / "stage2"),
        "tool_format": "v2",
        **cpu_hyperparameters(**overrides),
        "launcher": "python",
        "accelerate": {
            "config_file": str(REPO / "stages/configs/accelerate_zero2.yaml"),
            "num_machines": 1,
            "num_processes": 1,
            "machine_rank": 0,
            "main_process_ip": None,
            "main_process_port": None,
        },
    }


def write_params(path: Path, section: dict[str, Any], stage: str = "train_stage2") -> Path:
    path.write_text(yaml.safe_dump({stage: section}, sort_keys=False), encoding="utf-8")
    return path


def labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of tokens that carry a label."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        current = label != data.IGNORE_INDEX
        if current:
            assert label == token, "a label must be the token itself (the model shifts internally)"
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = current
    return runs


# ------------------------------------------------------------------------------------------
# Loss mask and data handling
# ------------------------------------------------------------------------------------------


def test_loss_mask_covers_exactly_the_generation_spans(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = tool_conversation("Paris")
    tools = [WEATHER_TOOL, TIME_TOOL]
    input_ids, labels, truncated = data.tokenize_conversation(tokenizer, messages, tools, "v2", 4096)
    assert not truncated

    # The spans the model must learn, read off the rendered text: after each <|ASSISTANT|>, from
    # the text-or-call decision token through the end-of-turn token (docs/design.md). Arguments
    # are trained in the compact form the server's parser returns.
    canonical = canonicalize_messages(messages)
    text = tokenizer.apply_chat_template(canonical, tools=tools, tokenize=False, tool_format="v2")
    eos = tokenizer.eos_token
    expected = [m.group(1) for m in re.finditer(rf"<\|ASSISTANT\|>(.*?{re.escape(eos)})", text, flags=re.S)]
    assert len(expected) == 2
    assert expected[0].startswith('<|FUNCTION_CALL|>get_weather<|PARAMETERS|>{"city":"Paris"}')
    assert "<|FUNCTION_CALL|>get_time<|PARAMETERS|>" in expected[0]
    assert expected[1].startswith("<|CONTENT|>It is 21 degrees")

    # ... which is also what the format module says an assistant turn is.
    assistant_turns = [m for m in canonical if m["role"] == "assistant"]
    assert expected == [render_assistant(m, eos) for m in assistant_turns]

    runs = [tokenizer.decode(run, skip_special_tokens=False) for run in labelled_runs(input_ids, labels)]
    assert runs == expected
    # Nothing else is trained on: prompt, tools, tool results and role tokens stay at -100.
    unlabelled = tokenizer.decode(
        [t for t, label in zip(input_ids, labels, strict=True) if label == data.IGNORE_INDEX],
        skip_special_tokens=False,
    )
    for prompt_part in ("You are a helpful assistant.", "Weather and time in Paris?", '{"temp": 21}', "<|USER|>"):
        assert prompt_part in unlabelled
    assert "<|CONTENT|>" not in unlabelled and "<|FUNCTION_CALL|>" not in unlabelled


def test_truncation_keeps_the_start_and_drops_rows_left_without_targets(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = tool_conversation("Oslo")
    full_ids, _, _ = data.tokenize_conversation(tokenizer, messages, [WEATHER_TOOL], "v2", 100_000)
    first_target = next(i for i, t in enumerate(full_ids) if t == tokenizer.convert_tokens_to_ids("<|FUNCTION_CALL|>"))
    ids, labels, truncated = data.tokenize_conversation(tokenizer, messages, [WEATHER_TOOL], "v2", first_target + 3)
    assert truncated and ids == full_ids[: first_target + 3]
    assert sum(label != data.IGNORE_INDEX for label in labels) == 3
    with pytest.raises(data.RowError, match="no_trainable_tokens_within_max_length"):
        data.tokenize_conversation(tokenizer, messages, [WEATHER_TOOL], "v2", first_target)


def test_a_source_may_train_longer_rows_one_row_per_sequence(tmp_path: Path, tiny_model_dir: Path,
                                                             one_thread: None) -> None:
    """max_length_by_source: a session source keeps rows the global max_length would cut; without
    packing each row is its own sequence (no attention mask between rows on a CPU)."""
    from transformers import AutoTokenizer

    from stages import train_stage2

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    session = tool_conversation("Oslo") + [{"role": "user", "content": "And in Lima, Rome and Kyiv, please?"},
                                           *tool_conversation("Lima")[1:]]
    full = len(data.tokenize_conversation(tokenizer, session, [WEATHER_TOOL], "v2", 100_000).input_ids)
    short = len(data.tokenize_conversation(tokenizer, tool_conversation("Rome"), [WEATHER_TOOL], "v2",
                                           100_000).input_ids)
    limit = (short + full) // 2
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lines = [filtered_row(session, [WEATHER_TOOL], "sessions"), filtered_row(session, [WEATHER_TOOL], "other")]
    lines += [filtered_row(tool_conversation(c), [WEATHER_TOOL], "other") for c in ("Rome", "Paris", "Lima")]
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data_dir / "validation.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    split = data.read_split(data_dir / "train.jsonl", tokenizer, "v2", limit, None, 0,
                            max_length_by_source={"sessions": full})
    assert sorted(len(ids) for ids in split.input_ids)[-2:] == [limit, full] and split.truncated == 1

    section = stage_section(tmp_path, tiny_model_dir, data_dir, max_length=limit, max_length_by_source={"sessions": full},
                            packing=False, per_device_batch_size=1, gradient_accumulation_steps=2, max_steps=2,
                            trainable_top_layers=1)
    train_stage2.main(["--params", str(write_params(tmp_path / "params.yaml", section))])
    summary = json.loads((tmp_path / "dvclive/stage2/metrics.json").read_text())
    assert summary["train"]["global_step"] == 2 and summary["data"]["train_rows_truncated"] == 1
    config = Stage2Config.model_validate(section)
    assert config.packed_length == full


def test_bad_rows_are_dropped_and_counted(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bad = [
        "{not json",
        json.dumps({"messages": "[", "tools": "[]", "source": "x"}),
        json.dumps({"messages": json.dumps({"role": "user"}), "tools": "[]", "source": "x"}),
        json.dumps({"messages": json.dumps([{"role": "user", "content": "hi"}]), "tools": "[]", "source": "x"}),
        json.dumps({"tools": "[]", "source": "x"}),
        filtered_row(
            [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{'a': 1}"}}]}],
            [], "x",
        ),
    ]
    data_dir = write_data(tmp_path / "data", rows=6, bad_lines=bad)
    split = data.read_split(data_dir / "train.jsonl", tokenizer, "v2", 4096, None, 0)
    assert len(split.input_ids) == 6
    assert dict(split.dropped) == {
        "invalid_json": 1,
        "invalid_nested_json": 1,
        "messages_not_a_list": 1,
        "no_assistant_turn": 1,
        "missing_messages": 1,
        "invalid_arguments": 1,
    }


def test_tool_format_reaches_the_template(tiny_model_dir: Path) -> None:
    """V1 merges the tool results of a turn, V2 keeps one message per result: the renders differ."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages, tools = tool_conversation("Lima"), [WEATHER_TOOL, TIME_TOOL]
    v1, _, _ = data.tokenize_conversation(tokenizer, messages, tools, "v1", 4096)
    v2, _, _ = data.tokenize_conversation(tokenizer, messages, tools, "v2", 4096)
    assert v1 != v2


# ------------------------------------------------------------------------------------------
# Training, outputs, resume
# ------------------------------------------------------------------------------------------


def read_tsv(path: Path) -> list[tuple[int, float]]:
    lines = path.read_text().splitlines()[1:]
    return [(int(float(a)), float(b)) for a, b in (line.split("\t")[:2] for line in lines)]


def test_training_lowers_the_loss_and_saves_a_loadable_model(
    tmp_path: Path, tiny_model_dir: Path, one_thread: None
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages import train_stage2

    data_dir = write_data(tmp_path / "data", rows=24, bad_lines=["garbage"])
    section = stage_section(tmp_path, tiny_model_dir, data_dir, trainable_top_layers=1, max_steps=12)
    train_stage2.main(["--params", str(write_params(tmp_path / "params.yaml", section))])

    curve = read_tsv(tmp_path / "dvclive/stage2/plots/metrics/train/loss.tsv")
    assert [step for step, _ in curve] == list(range(1, 13))
    first, last = sum(v for _, v in curve[:3]) / 3, sum(v for _, v in curve[-3:]) / 3
    assert last < first - 0.3, curve
    lr = read_tsv(tmp_path / "dvclive/stage2/plots/metrics/train/learning_rate.tsv")
    assert lr[-1][1] < max(v for _, v in lr)  # the cosine decays

    summary = json.loads((tmp_path / "dvclive/stage2/metrics.json").read_text())
    assert summary["train"]["global_step"] == 12
    assert summary["data"]["train_rows_dropped_by_reason"] == {"invalid_json": 1}
    assert summary["eval"]["loss"] > 0

    out = tmp_path / "models/stage2"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not out.with_name("stage2.partial").exists()
    metadata_in = json.loads((tiny_model_dir / METADATA_FILE).read_text())
    metadata_out = json.loads((out / METADATA_FILE).read_text())
    assert metadata_out == {**metadata_in, "tool_format": "v2"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    # The same bytes wherever it ran: nothing saved says how the tokenizer was loaded
    # (local_files_only followed HF_HUB_OFFLINE, which make sets and a bare `dvc repro` may not).
    from stages.hf_assets import TOKENIZER_LOADING_KEYS

    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert not set(TOKENIZER_LOADING_KEYS) & set(saved), sorted(set(TOKENIZER_LOADING_KEYS) & set(saved))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() > 0

    # Only the top layer (plus embeddings / final norm) was trained.
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    n_layers = model.config.num_hidden_layers
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert any(f"layers.{n_layers - 1}." in k for k in changed)
    assert not any(f"layers.{i}." in k for k in changed for i in range(n_layers - 1))


def _complete_checkpoints(checkpoint_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in the run folders under ``checkpoint_dir``."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in checkpoint_dir.glob("run-*/checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )


def _run_dir(checkpoint_dir: Path) -> Path:
    runs = list(checkpoint_dir.glob("run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def _stage_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(launcher.LAUNCHED_ENV, None)
    # One thread: a model this small gains nothing from two, and on a busy machine two OpenMP
    # threads per process make each step several times slower.
    env.update({"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1"})
    return env


def test_killed_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, one_thread: None
) -> None:
    from stages import train_stage2

    data_dir = write_data(tmp_path / "data", rows=40)
    max_steps = 30
    section = stage_section(tmp_path, tiny_model_dir, data_dir, max_steps=max_steps, save_steps=2, max_eval_rows=0)
    params = write_params(tmp_path / "params.yaml", section)
    checkpoint_dir = Path(section["checkpoint_dir"])
    argv = [sys.executable, "-m", "stages.train_stage2", "--params", str(params)]

    # First run: a separate process, killed hard once a checkpoint is complete.
    first = subprocess.Popen(argv, cwd=REPO, env=_stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not _complete_checkpoints(checkpoint_dir) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the run ended before it could be killed"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    killed_at = _complete_checkpoints(checkpoint_dir)
    assert killed_at and killed_at[-1] < max_steps
    assert not Path(section["output_dir"]).exists()

    # Second run: the same command (in this process to save start-up time). Saving less often is
    # bookkeeping, not a different run: the checkpoint stays resumable.
    section["save_steps"] = 100
    write_params(params, section)
    with caplog.at_level(logging.INFO, logger="stages.training"):
        train_stage2.main(["--params", str(params)])
    resumed_from = int(re.search(r"resuming from \S*checkpoint-(\d+)", caplog.text).group(1))
    assert resumed_from >= killed_at[-1]
    state = json.loads((_run_dir(checkpoint_dir) / f"checkpoint-{max_steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == max_steps
    # The step count continued: the resumed run logged only the steps after the checkpoint.
    assert min(e["step"] for e in state["log_history"] if e["step"] > resumed_from) == resumed_from + 1
    summary = json.loads((tmp_path / "dvclive/stage2/metrics.json").read_text())
    assert summary["train"]["resumed_from_step"] == resumed_from
    steps = [step for step, _ in read_tsv(tmp_path / "dvclive/stage2/plots/metrics/train/loss.tsv")]
    assert steps == list(range(1, max_steps + 1))  # the curve has each step once, no fold-back
    assert (Path(section["output_dir"]) / "model.safetensors").is_file()


def test_checkpoints_of_another_run_are_not_resumed(tmp_path: Path, tiny_model_dir: Path) -> None:
    data_dir = write_data(tmp_path / "data", rows=4)
    section = stage_section(tmp_path, tiny_model_dir, data_dir)
    config = Stage2Config.model_validate(section)
    root = Path(config.checkpoint_dir)
    root.mkdir(parents=True)
    (root / "checkpoint-9").mkdir()  # the layout before run folders: removed, never resumed
    (root / "checkpoint-9" / "trainer_state.json").write_text("{}")

    run_dir, resume = checkpoints.prepare_checkpoint_dir(config, "v2")
    assert resume is None and run_dir.parent == root and not (root / "checkpoint-9").exists()
    for step in (2, 4):
        (run_dir / f"checkpoint-{step}").mkdir()
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint-6").mkdir()  # killed while saving: no trainer_state.json
    assert checkpoints.prepare_checkpoint_dir(config, "v2") == (run_dir, run_dir / "checkpoint-4")
    assert not (run_dir / "checkpoint-6").exists()

    # Another experiment (other hyperparameters): its own folder; the first run's checkpoints stay.
    changed = Stage2Config.model_validate({**section, "learning_rate": 1e-3})
    other_dir, resume = checkpoints.prepare_checkpoint_dir(changed, "v2")
    assert resume is None and other_dir != run_dir and (run_dir / "checkpoint-4").is_dir()
    (other_dir / "checkpoint-2").mkdir()
    (other_dir / "checkpoint-2" / "trainer_state.json").write_text("{}")
    # Back to the first: it resumes its own checkpoint, and the other's stays too.
    assert checkpoints.prepare_checkpoint_dir(config, "v2") == (run_dir, run_dir / "checkpoint-4")
    assert (other_dir / "checkpoint-2").is_dir()
    assert checkpoints.prepare_checkpoint_dir(config, "v1")[0] not in (run_dir, other_dir)  # the format too

    # New data: a third run; only the KEEP_RUNS most recently started runs are kept.
    (data_dir / "train.jsonl").write_text((data_dir / "train.jsonl").read_text() * 2)
    third_dir, resume = checkpoints.prepare_checkpoint_dir(changed, "v2")
    assert resume is None and third_dir not in (run_dir, other_dir)
    assert len(list(root.glob("run-*"))) == checkpoints.KEEP_RUNS


# ------------------------------------------------------------------------------------------
# DeepSpeed and the launcher
# ------------------------------------------------------------------------------------------


# Run in a subprocess: DeepSpeed initialises torch.distributed, which must not leak into other
# tests. The shared-memory all-reduce kernel DeepSpeed compiles on first use (~1 min on 2 cores)
# only speeds up multi-rank all-reduce, so this single-rank check skips building it.
ZERO_RUNNER = """
import sys
import deepspeed.comm.torch as ds_torch
ds_torch.build_shm_op = lambda: None
from stages import train_stage2
train_stage2.main(sys.argv[1:])
"""


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed "
                    "(DS_BUILD_OPS=0 pip install deepspeed==0.19.8)")
def test_zero2_step_on_cpu_single_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    data_dir = write_data(tmp_path / "data", rows=8)
    section = stage_section(
        tmp_path,
        tiny_model_dir,
        data_dir,
        deepspeed=str(REPO / "stages/configs/zero2.json"),
        max_steps=2,
        save_steps=2,
        max_eval_rows=0,
        bf16=True,
    )
    params = write_params(tmp_path / "params.yaml", section)
    env = {**_stage_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000),
           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", ZERO_RUNNER, "--params", str(params)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = _run_dir(Path(section["checkpoint_dir"])) / "checkpoint-2"
    # A DeepSpeed checkpoint: ZeRO optimizer shards under global_step2/.
    assert list(checkpoint.glob("global_step2/*optim_states.pt"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    assert (Path(section["output_dir"]) / "model.safetensors").is_file()


def test_accelerate_command_for_multi_gpu_and_multi_node(tmp_path: Path, tiny_model_dir: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    single = Stage1Config.model_validate(params["train_stage1"])
    argv = launcher.accelerate_command(single, "stages.train_stage1", "params.yaml")
    assert argv == [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", "stages/configs/accelerate_zero2.yaml",
        "--num_machines", "1", "--num_processes", "8", "--machine_rank", "0",
        "--module", "stages.train_stage1", "--params", "params.yaml",
    ]  # fmt: skip

    multi_section = {
        **params["train_stage2"],
        "launcher": "accelerate",
        "accelerate": {
            "config_file": "stages/configs/accelerate_multinode_zero3.yaml",
            "num_machines": 4,
            "num_processes": 32,
            "machine_rank": 2,
            "main_process_ip": "10.1.2.3",
            "main_process_port": 29555,
        },
    }
    multi = Stage2Config.model_validate(multi_section)
    argv = launcher.accelerate_command(multi, "stages.train_stage2", "custom.yaml")
    assert argv[3:] == [
        "--config_file", "stages/configs/accelerate_multinode_zero3.yaml",
        "--num_machines", "4", "--num_processes", "32", "--machine_rank", "2",
        "--main_process_ip", "10.1.2.3", "--main_process_port", "29555",
        "--module", "stages.train_stage2", "--params", "custom.yaml",
    ]  # fmt: skip
    for name in ("accelerate_zero2.yaml", "accelerate_zero3.yaml", "accelerate_multinode_zero2.yaml",
                 "accelerate_multinode_zero3.yaml"):
        config = yaml.safe_load((REPO / "stages/configs" / name).read_text())
        assert config["distributed_type"] == "DEEPSPEED"
        assert (REPO / config["deepspeed_config"]["deepspeed_config_file"]).is_file()
    for name, stage in (("zero2.json", 2), ("zero3.json", 3)):
        assert json.loads((REPO / "stages/configs" / name).read_text())["zero_optimization"]["stage"] == stage


def test_accelerate_launcher_reexecutes_the_stage(tmp_path: Path, tiny_model_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`launcher: accelerate` runs the accelerate argv with the marker that makes children train."""
    data_dir = write_data(tmp_path / "data", rows=4)
    section = {**stage_section(tmp_path, tiny_model_dir, data_dir), "launcher": "accelerate"}
    params = write_params(tmp_path / "params.yaml", section)
    seen: dict[str, Any] = {}

    def fake_run(argv: list[str], env: dict[str, str], check: bool) -> subprocess.CompletedProcess[str]:
        seen.update(argv=argv, env=env)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.delenv(launcher.LAUNCHED_ENV, raising=False)
    monkeypatch.setattr(launcher.subprocess, "run", fake_run)
    from stages import train_stage2

    train_stage2.main(["--params", str(params)])
    assert seen["argv"][-4:] == ["--module", "stages.train_stage2", "--params", str(params)]
    assert seen["env"][launcher.LAUNCHED_ENV] == "1"
    assert (_run_dir(Path(section["checkpoint_dir"])) / checkpoints.FINGERPRINT_FILE).is_file()
    assert seen["env"][checkpoints.RUN_DIR_ENV] == str(_run_dir(Path(section["checkpoint_dir"])))
    assert not Path(section["output_dir"]).exists()


@pytest.mark.slow
def test_accelerate_launch_trains_with_zero2_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real `accelerate launch` re-execution, one CPU process, DeepSpeed from the accelerate config."""
    pytest.importorskip("deepspeed")
    data_dir = write_data(tmp_path / "data", rows=8)
    section = stage_section(tmp_path, tiny_model_dir, data_dir, max_steps=2, save_steps=2, max_eval_rows=0, bf16=True)
    section["launcher"] = "accelerate"
    params = write_params(tmp_path / "params.yaml", section)
    result = subprocess.run(
        [sys.executable, "-m", "stages.train_stage2", "--params", str(params)],
        cwd=REPO, env=_stage_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate.commands.launch" in result.stderr
    assert list((_run_dir(Path(section["checkpoint_dir"])) / "checkpoint-2").glob("global_step2/*optim_states.pt"))
    assert (Path(section["output_dir"]) / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------
# Configuration errors
# ------------------------------------------------------------------------------------------


def test_stage_modules_import_no_heavy_library() -> None:
    """`--help` and config errors stay instant: torch, transformers and trl load only to train."""
    code = ("import sys, stages.train_stage1, stages.train_stage2, stages.evaluate\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'datasets',"
            " 'fastapi', 'uvicorn'})\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_stage_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_repository_params_are_the_cpu_default() -> None:
    stage1 = load_section("train_stage1", Stage1Config, REPO / "params.yaml")
    stage2 = load_section("train_stage2", Stage2Config, REPO / "params.yaml")
    for config in (stage1, stage2):
        # GPU values live in recipes/gpu-8x.yaml (tests/test_gpu_recipe.py), not here.
        assert config.launcher == "python" and config.deepspeed is None and not config.bf16
        assert config.dtype == "float32" and config.max_steps is not None
    assert stage2.tool_format in ("v1", "v2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # The old per-hardware keys are refused: GPU values come from a recipe.
        (lambda s: s.update(profile="gpu"), "Extra inputs are not permitted"),
        (lambda s: s.update(tool_format="v3"), "tool_format"),
        (lambda s: s.update(learning_rate=1e-6, min_learning_rate=1e-5), "must be below"),
        (lambda s: s.update(lr_rate=1e-3), "Extra inputs are not permitted"),
        (lambda s: s.pop("max_length"), "max_length"),
        (lambda s: s.update(deepspeed="nowhere/zero2.json"), "deepspeed config not found"),
        (lambda s: s["accelerate"].update(num_machines=2, num_processes=2), "main_process_ip"),
        (lambda s: s["accelerate"].update(machine_rank=1), "out of range"),
        (lambda s: s.update(launcher="accelerate", accelerate={**s["accelerate"], "config_file": "x.yaml"}),
         "accelerate config not found"),
        (lambda s: s.update(launcher="torchrun"), "launcher"),
    ],
)
def test_config_errors_are_reported(tmp_path: Path, tiny_model_dir: Path, change: Any, message: str) -> None:
    section = stage_section(tmp_path, tiny_model_dir, tmp_path / "data")
    change(section)
    params = write_params(tmp_path / "params.yaml", section)
    with pytest.raises(ConfigError, match=message):
        load_section("train_stage2", Stage2Config, params)


def test_cli_exits_with_a_clear_error(tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from stages import train_stage1

    section = stage_section(tmp_path, tiny_model_dir, tmp_path / "missing-data")
    section.pop("tool_format")
    params = write_params(tmp_path / "params.yaml", section, stage="train_stage1")
    with pytest.raises(SystemExit) as exc:
        train_stage1.main(["--params", str(params)])
    assert exc.value.code == 2
    assert "training data not found" in caplog.text
    with pytest.raises(SystemExit):
        train_stage1.main(["--params", str(tmp_path / "nope.yaml")])
    assert "params file not found" in caplog.text


def test_drop_system_prompt_removes_it_from_tool_rows_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data_dir = write_data(tmp_path / "data", rows=10)
    system = tokenizer("You are a helpful assistant.", add_special_tokens=False)["input_ids"]

    def with_system(split: data.TokenizedSplit) -> list[bool]:
        return [any(ids[i:i + len(system)] == system for i in range(len(ids))) for ids in split.input_ids]

    kept = data.read_split(data_dir / "train.jsonl", tokenizer, "v2", 4096, None, 0, drop_system_prompt=0.0)
    dropped = data.read_split(data_dir / "train.jsonl", tokenizer, "v2", 4096, None, 0, drop_system_prompt=1.0)
    # Rows alternate chat (even, no system message) and tool rows (odd, with one).
    assert with_system(kept) == [i % 2 == 1 for i in range(10)]
    assert not any(with_system(dropped))
    assert dropped.system_prompts_dropped == 5 and kept.system_prompts_dropped == 0
    some = data.read_split(data_dir / "train.jsonl", tokenizer, "v2", 4096, None, 0, drop_system_prompt=0.5)
    again = data.read_split(data_dir / "train.jsonl", tokenizer, "v2", 4096, None, 0, drop_system_prompt=0.5)
    assert some.input_ids == again.input_ids  # drawn from the seed: the same rows every run


def test_resumed_curves_survive_a_summary_torn_by_a_kill(tmp_path: Path) -> None:
    """A run killed while dvclive rewrote metrics.json leaves it empty; the resumed run must still
    log (the summary is rebuilt), and curve rows logged after the resumed checkpoint are dropped."""
    from types import SimpleNamespace

    from stages.training.curves import make_dvclive_callback

    live_dir = tmp_path / "dvclive"
    first = make_dvclive_callback(str(live_dir), None)
    for step in (1, 2, 3):
        first.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=step), None, logs={"loss": 1.0 / step})
    (live_dir / "metrics.json").write_text("", encoding="utf-8")  # the kill, mid-write

    resumed = make_dvclive_callback(str(live_dir), 2)
    resumed.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=3), None, logs={"loss": 0.25})
    resumed.close({"data": {"rows": 1}})
    summary = json.loads((live_dir / "metrics.json").read_text(encoding="utf-8"))
    assert summary["train"]["loss"] == 0.25 and summary["data"] == {"rows": 1}
    steps = [line.split("\t")[0] for line in (live_dir / "plots/metrics/train/loss.tsv").read_text().splitlines()]
    assert steps[0] == "step" and [int(s) for s in steps[1:]] == [1, 2, 3]


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": f"Does {name.replace('_', ' ')}.",
                                             "parameters": {"type": "object", "properties": {
                                                 "x": {"type": "string"}}, "required": ["x"]}}}


def test_pad_tool_lists_lengthens_tool_rows_and_never_truncates(tmp_path: Path, tiny_model_dir: Path) -> None:
    """pad_tool_lists: rows offering tools (those calling one, or with answers=any all) get other rows' tools
    (their own kept, the targets unchanged, none named after the user's words), chat rows keep
    none, a row that would pass its length limit gets fewer, the same draws every run, and share 0
    is the unpadded split."""
    from transformers import AutoTokenizer

    from stages.training.config import ToolListPadding

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    refusal = [{"role": "user", "content": "Book me a flight."},
               {"role": "assistant", "content": "I cannot book flights with these tools."}]
    lines = [filtered_row(tool_conversation(c), [WEATHER_TOOL, TIME_TOOL], "hermes_fc") for c in ("Oslo", "Lima")]
    lines += [filtered_row(refusal, [_tool(f"tool_{i}_a"), _tool(f"tool_{i}_b")], "toolace") for i in range(5)]
    lines.append(filtered_row(refusal, [_tool("bookFlight")], "toolace"))  # in the pool: what the user asked
    lines.append(filtered_row(chat_conversation("Rome"), [], "openhermes"))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    every = ["get_weather", "get_time", "bookFlight", *(f"tool_{i}_{s}" for i in range(5) for s in "ab")]

    def names(ids: list[int]) -> set[str]:
        text = tokenizer.decode(ids)
        return {n for n in every if re.search(rf"\b{n}\b", text)}

    plain = data.read_split(path, tokenizer, "v2", 100_000, None, 0)
    off = data.read_split(path, tokenizer, "v2", 100_000, None, 0, pad_tool_lists=ToolListPadding(share=0.0))
    assert off.input_ids == plain.input_ids and off.tool_lists_padded == 0
    calls_only = data.read_split(path, tokenizer, "v2", 100_000, None, 0,
                                 pad_tool_lists=ToolListPadding(share=1.0, tools=(7, 7), answers="calls"))
    assert calls_only.tool_lists_padded == 2 and calls_only.input_ids[2:] == plain.input_ids[2:]
    assert all(len(names(ids)) == 7 for ids in calls_only.input_ids[:2])
    padding = ToolListPadding(share=1.0, tools=(7, 7), answers="any")
    padded = data.read_split(path, tokenizer, "v2", 100_000, None, 0, pad_tool_lists=padding)
    assert padded.tool_lists_padded == 8
    for i in range(8):
        own = names(plain.input_ids[i])
        assert own <= names(padded.input_ids[i])
        trained = [t for t in padded.labels[i] if t != data.IGNORE_INDEX]
        assert trained == [t for t in plain.labels[i] if t != data.IGNORE_INDEX]
    for i in (0, 1):  # the call rows: their own tools and 5 others (the pool has 13 names)
        assert len(names(padded.input_ids[i])) == 7
    for i in range(2, 7):  # the refusals never get the tool that does what the user asked
        assert "bookFlight" not in names(padded.input_ids[i]) and len(names(padded.input_ids[i])) == 7
    assert padded.input_ids[8] == plain.input_ids[8]  # a chat row offers no tools: untouched
    assert data.read_split(path, tokenizer, "v2", 100_000, None, 0, pad_tool_lists=padding).input_ids == padded.input_ids

    # A limit with room for some added tools, not all five: fewer are added, nothing is cut.
    limit = (len(plain.input_ids[0]) + len(padded.input_ids[0])) // 2
    tight = data.read_split(path, tokenizer, "v2", limit, None, 0, pad_tool_lists=padding)
    assert tight.truncated == 0 and all(len(ids) <= limit for ids in tight.input_ids)
    assert 0 < tight.tools_added < padded.tools_added
    # No room at all: a padded render that cuts every target falls back to the row as it was.
    snug_limit = max(len(plain.input_ids[0]), len(plain.input_ids[1]))
    snug = data.read_split(path, tokenizer, "v2", snug_limit, None, 0, pad_tool_lists=padding)
    snug_plain = data.read_split(path, tokenizer, "v2", snug_limit, None, 0)
    assert not snug.dropped and snug.input_ids[:2] == snug_plain.input_ids[:2]
    with pytest.raises(ValueError, match="min 9 is above max 3"):
        ToolListPadding(share=0.5, tools=(9, 3))
