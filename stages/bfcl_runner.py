"""Drive bfcl-eval from inside its own virtual environment (``.venv-bfcl``).

This file runs under the bfcl interpreter, never the project's: it imports only the standard
library and ``bfcl_eval`` (whose pins conflict with the project's). ``stages/evaluate.py`` starts
the server and then calls::

    .venv-bfcl/bin/python stages/bfcl_runner.py run --model gpt-4-turbo-2024-04-09-FC \
        --spec SPEC.json --cases-out CASES.json

with ``BFCL_PROJECT_ROOT`` (the work dir), ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` set.
``SPEC.json`` maps each category to the number of leading cases to run (or ``"all"``). The run
writes ``test_case_ids_to_generate.json`` into ``BFCL_PROJECT_ROOT``, generates with ``--run-ids``
semantics through the Responses API handler, evaluates with partial evaluation, and writes
``CASES.json``: for every case run, its category and the exact tools the handler offered (bfcl's
own conversion), so the project side can check every returned call against them.

``scripts/bfcl_venv.sh`` also installs a copy of this file into the venv's site-packages with a
``.pth`` line calling :func:`install_name_hook`, so that the original project's command
``OPENAI_BASE_URL=http://localhost:8000/v1 bfcl generate --model gpt-4-turbo-2024-04-09-FC ...``
works unchanged: that name is not in this bfcl version's ``MODEL_CONFIG_MAPPING`` and is added,
mapped to ``OpenAIResponsesHandler``, when bfcl loads its registry (see :class:`_BfclImportHook`
for the two defaults it also sets). Nothing here imports bfcl at interpreter start.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

REGISTRY_MODULE = "bfcl_eval.constants.model_config"
EVAL_CONFIG_MODULE = "bfcl_eval.constants.eval_config"
# The original project's evaluation command used this name; later bfcl releases dropped it.
DEFAULT_ALIASES = ("gpt-4-turbo-2024-04-09-FC",)
FC_SUFFIX = "-FC"


def register_model_name(registry: ModuleType, registry_name: str) -> bool:
    """Add ``registry_name`` (``<api model>-FC``) to bfcl's registry as a Responses-API FC model.

    Returns False when bfcl already knows the name (its own entry is kept). The registry name must
    not contain ``_``: bfcl turns ``_`` back into ``/`` when it reads result folders.
    """
    mapping = registry.MODEL_CONFIG_MAPPING
    if registry_name in mapping:
        return False
    if "_" in registry_name or not registry_name.endswith(FC_SUFFIX):
        raise ValueError(f"bfcl model name '{registry_name}' must end with '{FC_SUFFIX}' and contain no '_'")
    from bfcl_eval.model_handler.api_inference.openai_response import OpenAIResponsesHandler

    api_name = registry_name[: -len(FC_SUFFIX)]
    mapping[registry_name] = registry.ModelConfig(
        model_name=api_name,
        display_name=f"{api_name} (FC, OpenAI-compatible server)",
        url="https://github.com/kongjiellx/octupus-tool-call",
        org="octupus-tool-call",
        license="Apache-2.0",
        model_handler=OpenAIResponsesHandler,
        # No prices: bfcl then reports latency-based cost instead of a made-up API bill.
        input_price=None,
        output_price=None,
        is_fc_model=True,
        underscore_to_dot=True,
    )
    return True


class _BfclImportHook(importlib.abc.MetaPathFinder):
    """Adjusts two bfcl modules as bfcl itself imports them.

    Importing bfcl here would cost seconds at every interpreter start and import every vendor SDK;
    wrapping the two modules' loaders defers the work to the moment bfcl loads them:

    - before ``bfcl_eval.constants.eval_config`` runs: ``BFCL_PROJECT_ROOT`` defaults to the current
      directory (bfcl's own default is site-packages, where it also reads a ``.env`` that overrides
      the caller's variables);
    - after ``bfcl_eval.constants.model_config`` ran: ``names`` are registered, and a placeholder
      ``OPENAI_API_KEY`` is set when ``OPENAI_BASE_URL`` points at a server but no key was given
      (the OpenAI client refuses to start without one; the project's server is open by default).
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in (REGISTRY_MODULE, EVAL_CONFIG_MODULE):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        loader = spec.loader
        original = loader.exec_module
        names = self.names

        def exec_module(module: ModuleType) -> None:
            if fullname == EVAL_CONFIG_MODULE:
                os.environ.setdefault("BFCL_PROJECT_ROOT", os.getcwd())
                original(module)
                return
            original(module)
            for name in names:
                register_model_name(module, name)
            if os.environ.get("OPENAI_BASE_URL") and not os.environ.get("OPENAI_API_KEY"):
                os.environ["OPENAI_API_KEY"] = "unused"

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_name_hook(names: tuple[str, ...] = DEFAULT_ALIASES) -> None:
    """Called from the ``.pth`` file in ``.venv-bfcl`` (see :class:`_BfclImportHook`).

    ``OCTUPUS_BFCL_MODELS`` (comma-separated ``<name>-FC``) registers more names.
    """
    if any(isinstance(f, _BfclImportHook) for f in sys.meta_path):
        return
    extra = tuple(n for n in os.environ.get("OCTUPUS_BFCL_MODELS", "").split(",") if n)
    sys.meta_path.insert(0, _BfclImportHook(names + extra))


# ----------------------------------------------------------------------------- the stage's run


def _project_root() -> Path:
    root = os.environ.get("BFCL_PROJECT_ROOT")
    if not root:
        # bfcl would otherwise write into site-packages and read a .env there that overrides ours.
        raise SystemExit("bfcl_runner: BFCL_PROJECT_ROOT must be set to a work directory")
    return Path(root)


def select_cases(spec: dict[str, int | str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The first N cases (in bfcl's file order) of each category, and the offered tools of each.

    Returns the ids per category and ``{"available": {category: cases in bfcl}, "cases": [{id,
    category, tools}]}``.
    """
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import convert_to_tool
    from bfcl_eval.utils import load_dataset_entry

    ids: dict[str, list[str]] = {}
    available: dict[str, int] = {}
    cases: list[dict[str, Any]] = []
    for category, count in spec.items():
        entries = load_dataset_entry(category)
        chosen = entries if count == "all" else entries[: int(count)]
        if count != "all" and len(chosen) < int(count):
            print(f"bfcl_runner: {category} has only {len(entries)} cases, {count} asked", file=sys.stderr)
        ids[category] = [e["id"] for e in chosen]
        available[category] = len(entries)
        for entry in chosen:
            # Multi-turn "missed function" cases add tools in later turns: all of them were offered.
            functions = list(entry.get("function", []))
            for extra in (entry.get("missed_function") or {}).values():
                functions.extend(extra)
            tools = convert_to_tool(functions, GORILLA_TO_OPENAPI, ModelStyle.OPENAI_RESPONSES)
            cases.append({"id": entry["id"], "category": category, "tools": tools})
    return ids, {"available": available, "cases": cases}


RESPONSES_LOG = "responses.jsonl"


def record_response_outcomes(log_path: Path) -> None:
    """Log how every Responses API answer ended, per case, to ``log_path`` (JSON lines).

    bfcl keeps only the calls or the text of an answer. Whether the server cut it (``status:
    incomplete``: the output cap or the repetition guard) and whether it was cut inside a call is
    lost, and an answer cut inside a call then reads as "no call", which irrelevance scores as a
    pass. Each line: ``{"id", "status", "reason", "calls", "incomplete_calls", "text_chars"}``.
    """
    import threading

    from bfcl_eval.model_handler.api_inference.openai_response import OpenAIResponsesHandler

    if getattr(OpenAIResponsesHandler, "_octupus_recording", False):
        return
    lock = threading.Lock()
    pre_query = OpenAIResponsesHandler._pre_query_processing_FC
    query = OpenAIResponsesHandler._query_FC

    def _pre_query_processing_FC(self: Any, inference_data: dict, test_entry: dict) -> dict:
        inference_data = pre_query(self, inference_data, test_entry)
        inference_data["octupus_case_id"] = test_entry["id"]
        return inference_data

    def _query_FC(self: Any, inference_data: dict) -> Any:
        api_response, latency = query(self, inference_data)
        items = list(getattr(api_response, "output", None) or [])
        calls = [i for i in items if getattr(i, "type", None) == "function_call"]
        details = getattr(api_response, "incomplete_details", None)
        line = {"id": inference_data.get("octupus_case_id"), "status": getattr(api_response, "status", None),
                "reason": getattr(details, "reason", None) if details is not None else None,
                "calls": len(calls),
                "incomplete_calls": sum(1 for c in calls if getattr(c, "status", "completed") != "completed"),
                "text_chars": len(getattr(api_response, "output_text", "") or "")}
        with lock, log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        return api_response, latency

    OpenAIResponsesHandler._pre_query_processing_FC = _pre_query_processing_FC
    OpenAIResponsesHandler._query_FC = _query_FC
    OpenAIResponsesHandler._octupus_recording = True


def run(model: str, spec_path: Path, cases_out: Path, num_threads: int) -> int:
    root = _project_root()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))

    from bfcl_eval.constants import model_config

    register_model_name(model_config, model)
    ids, cases = select_cases(spec)
    # bfcl reads the subset from this fixed file name under its project root (--run-ids).
    (root / "test_case_ids_to_generate.json").write_text(json.dumps(ids, indent=1), encoding="utf-8")
    cases_out.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    print(f"bfcl_runner: {len(cases['cases'])} cases in {len(ids)} categories", flush=True)
    (root / RESPONSES_LOG).unlink(missing_ok=True)
    record_response_outcomes(root / RESPONSES_LOG)

    from bfcl_eval._llm_response_generation import main as generation_main
    from bfcl_eval.eval_checker.eval_runner import main as evaluation_main

    generation_main(SimpleNamespace(
        model=[model], test_category=list(ids), temperature=0.001, include_input_log=False,
        exclude_state_log=True, num_gpus=1, num_threads=num_threads, gpu_memory_utilization=0.9,
        backend="vllm", skip_server_setup=True, local_model_path=None, result_dir=None,
        allow_overwrite=True, run_ids=True, enable_lora=False, max_lora_rank=None, lora_modules=None))
    evaluation_main([model], list(ids), None, None, partial_eval=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run bfcl-eval generation + partial evaluation on a subset")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--model", required=True, help="bfcl registry name, e.g. gpt-4-turbo-2024-04-09-FC")
    p_run.add_argument("--spec", required=True, type=Path, help="JSON: category -> number of cases or 'all'")
    p_run.add_argument("--cases-out", required=True, type=Path)
    p_run.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args(argv)
    return run(args.model, args.spec, args.cases_out, args.num_threads)


if __name__ == "__main__":
    sys.exit(main())
