#!/usr/bin/env bash
# Runs the whole test suite: fetches ONNX Runtime's CPU library from the
# onnxruntime wheel on PyPI (once) and the `openai` client into a venv
# (once), then every crate's tests on both backends.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install-ort.sh
# the official `openai` client drives `flamingo serve` in cli/tests/serve.rs
if [ ! -x .venv-test/bin/python ] || ! .venv-test/bin/python -c "import openai" 2>/dev/null; then
  python3 -m venv .venv-test
  .venv-test/bin/pip install --quiet --disable-pip-version-check "openai==2.54.0"
fi
export FLAMINGO_TEST_PYTHON="${FLAMINGO_TEST_PYTHON:-$root/.venv-test/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"
cargo test --workspace "$@"
# the GPU paths build and their unit tests (provider options, profiles,
# engine-cache paths) pass without a GPU
# (one invocation, so the features unify once and nothing builds twice)
cargo test -p flamingo -p flamingo-runtime --features cuda,tensorrt --lib --bins "$@"
