#!/usr/bin/env bash
# Builds the `flamingo` Python wheel (abi3: CPython 3.9 and later) into
# target/wheels/ with maturin from PyPI (installed into .venv-build once).
#   scripts/python-wheel.sh            # release build
#   scripts/python-wheel.sh --dev      # the dev profile (what the tests use: faster to build)
# Extra arguments go to `maturin build` (e.g. --features cuda).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv-build/bin/maturin ]; then
  python3 -m venv .venv-build
  .venv-build/bin/pip install --quiet --disable-pip-version-check "maturin==1.16.0"
fi
profile=(--release)
if [ "${1:-}" = "--dev" ]; then
  profile=(--profile dev)
  shift
fi
rm -f target/wheels/flamingo-*.whl
.venv-build/bin/maturin build "${profile[@]}" --manifest-path python/Cargo.toml \
  --out target/wheels "$@" >&2
ls target/wheels/flamingo-*.whl
