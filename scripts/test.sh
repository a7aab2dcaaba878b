#!/usr/bin/env bash
# Runs the whole test suite: fetches ONNX Runtime's CPU library from the
# onnxruntime wheel on PyPI (once), then every crate's tests on both backends.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install-ort.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"
cargo test --workspace "$@"
# the GPU paths build and their unit tests (provider options, profiles,
# engine-cache paths) pass without a GPU
# (one invocation, so the features unify once and nothing builds twice)
cargo test -p flamingo -p flamingo-runtime --features cuda,tensorrt --lib --bins "$@"
