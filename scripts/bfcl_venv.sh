#!/usr/bin/env bash
# Creates (idempotently) the separate virtual environment bfcl-eval runs in: its own pins
# (numpy, filelock, networkx, CUDA torch through sentence-transformers) conflict with the
# project's and with vLLM. The slim install below (no --deps resolution for bfcl-eval, then its
# light requirements) covers every category except memory_vector, which needs torch and a model
# download and is refused by stages/evaluate.py anyway.
#
# It also installs a copy of stages/bfcl_runner.py plus a .pth line that registers
# `gpt-4-turbo-2024-04-09-FC` (the original project's evaluation command; not in this bfcl
# version's registry) as a Responses-API function-calling model, so that
#   OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=x BFCL_PROJECT_ROOT=$PWD/bfcl \
#     .venv-bfcl/bin/bfcl generate --model gpt-4-turbo-2024-04-09-FC --test-category simple_python
# works unchanged against `make serve`.
#
# Usage: scripts/bfcl_venv.sh            (BFCL_VENV=.venv-bfcl PYTHON=python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BFCL_VENV=${BFCL_VENV:-.venv-bfcl}
PYTHON=${PYTHON:-python3}
BFCL_VERSION=2026.3.23
REQUIREMENTS=(
  requests tqdm numpy pandas "pydantic>=2.8.2" python-dotenv tree_sitter==0.21.3
  tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 openai mistralai==1.7.0 anthropic
  cohere==5.18.0 typer tabulate datamodel-code-generator==0.25.7 google-genai qwen-agent soundfile
  mpmath tenacity writer-sdk overrides boto3 beautifulsoup4 html2text rank_bm25
  google-search-results filelock
)
export PIP_DISABLE_PIP_VERSION_CHECK=1
STAMP="$BFCL_VENV/.octupus-bfcl-installed"
WANT="bfcl-eval==$BFCL_VERSION ${REQUIREMENTS[*]}"

if [[ ! -x "$BFCL_VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$BFCL_VENV"
fi
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$WANT" ]]; then
  "$BFCL_VENV/bin/pip" install -q --no-deps "bfcl-eval==$BFCL_VERSION"
  # pip then warns that bfcl-eval "requires" numpy==1.26.4, filelock==3.20.0, sentence-transformers...:
  # expected with this slim install, which runs every non-memory category with these versions.
  "$BFCL_VENV/bin/pip" install -q "${REQUIREMENTS[@]}"
  printf '%s' "$WANT" > "$STAMP"
fi

# Refreshed on every call (cheap) so an edit of stages/bfcl_runner.py reaches the hook.
SITE=$("$BFCL_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp stages/bfcl_runner.py "$SITE/octupus_bfcl_runner.py"
echo "import octupus_bfcl_runner; octupus_bfcl_runner.install_name_hook()" > "$SITE/octupus_bfcl.pth"

# Fails here, not in the middle of an evaluation, if the install is broken. (bfcl creates its
# result/score folders on import: give it a throwaway root.)
CHECK_ROOT=$(mktemp -d)
trap 'rm -rf "$CHECK_ROOT"' EXIT
BFCL_PROJECT_ROOT=$CHECK_ROOT "$BFCL_VENV/bin/python" -c "
from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING as m
assert 'gpt-4-turbo-2024-04-09-FC' in m, 'name hook not active'
print('bfcl venv ready:', len(m), 'models')"
