#!/usr/bin/env bash
# Build llama.cpp's llama-server (and llama-batched-bench) from the llama.cpp sources that ship inside
# the llama-cpp-python source distribution installed in .venv, so the server and Kefu's engine run the
# very same llama.cpp. Output: var/llama.cpp/build/bin/. About 10 minutes on 2 cores.
# Extra CMake flags (e.g. -DGGML_CUDA=ON) can be passed as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
VERSION=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__)")
ROOT=var/llama.cpp
mkdir -p "$ROOT"
if [ ! -d "$ROOT/llama_cpp_python-$VERSION" ]; then
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT"
  tar -xzf "$ROOT/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT"
fi
SRC="$ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF "$@"
cmake --build "$ROOT/build" -j"$(nproc)" --target llama-server llama-batched-bench
echo "built: $ROOT/build/bin/llama-server (llama.cpp from llama-cpp-python $VERSION)"
