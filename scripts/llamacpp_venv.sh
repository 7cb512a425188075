#!/usr/bin/env bash
# Creates (idempotently) llama.cpp's side of the serving benchmark (`python -m bench serve`), kept
# apart from .venv:
#   - .venv-llamacpp/build/bin/llama-server and llama-quantize: the native llama.cpp tools, built
#     from the llama.cpp that llama-cpp-python vendors (one cmake build, CPU only, -march=native).
#     llama-server serves requests in parallel slots, the fair peer at 8 and 32 clients.
#   - .venv-llamacpp: llama-cpp-python[server] (its `python -m llama_cpp.server`, requests one at a
#     time), installed from the same source without compiling llama.cpp a second time: its Python
#     package loads the shared libraries of the build above (copied into llama_cpp/lib).
#   - .venv-llamacpp/src/llama.cpp: the vendored source, whose convert_hf_to_gguf.py and gguf-py
#     scripts/export_gguf.sh uses to convert a transformers model folder to GGUF (with
#     .venv-llamacpp/convert-deps: sentencepiece, which the converter imports).
# Only the first run needs the network (pip downloads the sdist and the server's dependencies);
# the web UI of llama-server is neither downloaded nor built (it is not needed for the API).
#
# Usage: scripts/llamacpp_venv.sh   (LLAMACPP_VENV=.venv-llamacpp PYTHON=python3 JOBS=nproc)
# Takes about 6-8 minutes on 2 cores; wrap it in `flock /tmp/heavy.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMACPP_VENV=${LLAMACPP_VENV:-.venv-llamacpp}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
VERSION=0.3.36
PACKAGE="llama-cpp-python[server]==$VERSION"
export PIP_DISABLE_PIP_VERSION_CHECK=1
STAMP="$LLAMACPP_VENV/.octupus-llamacpp-installed"
# CPU build: native instructions (AVX2 here), no GPU backends, no BLAS, OpenMP threads, no
# networking features (curl/openssl are for downloading models, which we never do).
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_BLAS=OFF
             -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON
             -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
             -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
             -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF)
TARGETS=(llama-server llama-quantize llama ggml mtmd)
WANT="$PACKAGE ${CMAKE_FLAGS[*]} $(sha256sum "$0" | cut -c1-16)"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "llama.cpp venv up to date: $LLAMACPP_VENV ($PACKAGE)"
  exit 0
fi

if [[ ! -x "$LLAMACPP_VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$LLAMACPP_VENV"
fi
PIP="$LLAMACPP_VENV/bin/pip"
"$PIP" install -q --upgrade "pip>=24"

# 1. The source distribution, kept so that conversion and rebuilds work offline.
SRC="$LLAMACPP_VENV/src"
SDIST="$SRC/llama_cpp_python-$VERSION.tar.gz"
mkdir -p "$SRC"
if [[ ! -f "$SDIST" ]]; then
  "$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC"
fi
if [[ ! -d "$SRC/llama_cpp_python-$VERSION" ]]; then
  tar -xzf "$SDIST" -C "$SRC"
  # The sdist keeps the submodule's gitlink, which points nowhere here.
  rm -f "$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp/.git"
fi
ln -sfn "llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC/llama.cpp"
# llama.cpp's cmake asks git for a commit and whether the tree is dirty. The sdist ships a .git of
# llama-cpp-python (and a gitlink whose index cmake watches: `git diff-index` refreshes it, so the
# build reconfigured forever), and above it lies this repository's checkout: git's search stops
# at vendor/, so the build info says "unknown" and nothing is watched.
export GIT_CEILING_DIRECTORIES
GIT_CEILING_DIRECTORIES=$(cd "$SRC/llama_cpp_python-$VERSION/vendor" && pwd -P)

# 2. Native llama.cpp: the server, the quantizer and the shared libraries.
BUILD="$LLAMACPP_VENV/build"
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
start=$(date +%s)
cmake -S "$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$BUILD" "${GENERATOR[@]}" "${CMAKE_FLAGS[@]}" > "$LLAMACPP_VENV/cmake-configure.log"
cmake --build "$BUILD" --target "${TARGETS[@]}" -j "$JOBS"
echo "llama.cpp built in $(( $(date +%s) - start )) s"

# 3. llama-cpp-python[server] from the same sdist, its llama.cpp not compiled again (LLAMA_BUILD=OFF),
#    then the libraries of step 2 put where the package looks for them.
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PIP" install -q "llama-cpp-python[server] @ file://$PWD/$SDIST"
LIBDIR=$("$LLAMACPP_VENV/bin/python" -c "
import importlib.util, pathlib
print(pathlib.Path(importlib.util.find_spec('llama_cpp').origin).parent / 'lib')")
mkdir -p "$LIBDIR"
cp -a "$BUILD"/bin/lib*.so* "$LIBDIR"/

# 4. The GGUF conversion runs in the project's .venv (torch, transformers) with the vendored gguf-py;
#    the one module it imports that .venv lacks (sentencepiece, even for BPE tokenizers) goes into a
#    folder of its own that scripts/export_gguf.sh puts on PYTHONPATH.
"$PIP" install -q --no-deps --upgrade --target "$LLAMACPP_VENV/convert-deps" "sentencepiece>=0.1.98,<0.3.0"

"$LLAMACPP_VENV/bin/python" -c "
import llama_cpp
print('llama-cpp-python', llama_cpp.__version__, 'loads', llama_cpp.llama_cpp._lib._name)"
"$BUILD/bin/llama-server" --version 2>&1 | head -2
printf '%s' "$WANT" > "$STAMP"
echo "llama.cpp venv ready: $LLAMACPP_VENV (llama-server: $BUILD/bin/llama-server)"
