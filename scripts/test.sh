#!/usr/bin/env bash
# Runs the whole test suite: fetches ONNX Runtime's CPU library from the
# onnxruntime wheel on PyPI (once) and the Python test tools into a venv
# (once: the `openai` client, pytest, numpy, pillow, nvidia-pytriton's
# tritonserver, tritonclient, and onnxruntime for the Triton check's CPU
# stand-ins), then every crate's tests on both
# backends, the Python package's tests (its wheel built and installed into
# the venv), and the Triton check (scripts/triton-check.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install-ort.sh
# the official `openai` client drives `flamingo serve` in cli/tests/serve.rs
# pytest drives the Python package; tritonclient drives Triton in scripts/triton-check.sh
if [ ! -x .venv-test/bin/python ] || ! .venv-test/bin/python -c \
    "import openai, pytest, numpy, PIL, pytriton, tritonclient.grpc, tritonclient.http, onnxruntime" 2>/dev/null; then
  python3 -m venv .venv-test
  .venv-test/bin/pip install --quiet --disable-pip-version-check "openai==2.54.0" \
    "pytest==9.2.0" "numpy==1.26.4" "pillow==13.0.0" \
    "nvidia-pytriton==0.7.0" "tritonclient[all]==2.73.0" "onnxruntime==1.31.1"
fi
export FLAMINGO_TEST_PYTHON="${FLAMINGO_TEST_PYTHON:-$root/.venv-test/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"
# (the Python extension is tested from Python, below)
cargo test --workspace --exclude flamingo-python "$@"
# the GPU paths build and their unit tests (provider options, profiles,
# engine-cache paths) pass without a GPU
# (one invocation, so the features unify once and nothing builds twice)
cargo test -p flamingo -p flamingo-runtime --features cuda,tensorrt --lib --bins "$@"
# the Python package: its wheel (the dev profile: quicker to build than the
# release one), installed into the venv, against the reference ids and scores
wheel="$(scripts/python-wheel.sh --dev | tail -1)"
.venv-test/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
# (from the root: python/flamingo, the sources, would shadow the installed package)
.venv-test/bin/python -m pytest -q -p no:cacheprovider python/tests
# Triton Inference Server serving the tiny model through `flamingo export-triton`
FLAMINGO_BIN="$root/target/debug/flamingo" VENV="$root/.venv-test" scripts/triton-check.sh "$wheel"
