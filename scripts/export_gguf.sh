#!/usr/bin/env bash
# Converts a transformers model folder (e.g. models/base, models/stage2) to one GGUF file, the
# format llama.cpp, Ollama and LM Studio load, with the llama.cpp vendored by llama-cpp-python
# (scripts/llamacpp_venv.sh builds it): its convert_hf_to_gguf.py and gguf-py run in the project's
# .venv (torch and transformers are there; sentencepiece comes from .venv-llamacpp/convert-deps);
# quantized types other than q8_0 go through the native llama-quantize. Works offline.
#
# Usage: scripts/export_gguf.sh MODEL_DIR OUT.gguf [TYPE]
#   TYPE: f32, f16 (default), bf16, q8_0 (written by the converter), or any type llama-quantize
#         knows (q4_k_m, q4_0, q5_k_m, ...), quantized from an f32 conversion.
# Environment: LLAMACPP_VENV (.venv-llamacpp), PY (.venv/bin/python), THREADS (nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
MODEL_DIR=$1
OUT=$2
TYPE=$(printf '%s' "${3:-f16}" | tr '[:upper:]' '[:lower:]')
LLAMACPP_VENV=${LLAMACPP_VENV:-.venv-llamacpp}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-$(nproc)}
SRC="$LLAMACPP_VENV/src/llama.cpp"
QUANTIZE="$LLAMACPP_VENV/build/bin/llama-quantize"

if [[ ! -f "$SRC/convert_hf_to_gguf.py" ]]; then
  echo "no llama.cpp source at $SRC: run scripts/llamacpp_venv.sh first" >&2
  exit 1
fi
if [[ ! -f "$MODEL_DIR/config.json" ]]; then
  echo "$MODEL_DIR is not a transformers model folder (no config.json)" >&2
  exit 1
fi
mkdir -p "$(dirname "$OUT")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

convert() {  # convert OUTTYPE FILE
  PYTHONPATH="$LLAMACPP_VENV/convert-deps${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" "$SRC/convert_hf_to_gguf.py" "$MODEL_DIR" --outtype "$1" --outfile "$2"
}

case "$TYPE" in
  f32|f16|bf16|q8_0)
    convert "$TYPE" "$OUT"
    ;;
  *)
    if [[ ! -x "$QUANTIZE" ]]; then
      echo "type $TYPE needs $QUANTIZE: run scripts/llamacpp_venv.sh first" >&2
      exit 1
    fi
    TMP="$OUT.f32.tmp.gguf"
    trap 'rm -f "$TMP"' EXIT
    convert f32 "$TMP"
    "$QUANTIZE" "$TMP" "$OUT" "$TYPE" "$THREADS"
    ;;
esac
echo "wrote $OUT ($TYPE, $(du -h "$OUT" | cut -f1))"
