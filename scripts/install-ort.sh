#!/usr/bin/env bash
# Installs ONNX Runtime's shared library for the `ort-cpu` backend from the
# `onnxruntime` wheel on PyPI (nothing is fetched from anywhere else) into
# .ort/lib/ at the repository root, where the runtime looks for it.
# Usage: scripts/install-ort.sh            (idempotent)
#        ORT_VERSION=1.31.1 scripts/install-ort.sh
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.ort/lib"
lib="$dest/libonnxruntime.so.$ORT_VERSION"
if [ -f "$lib" ]; then
  echo "ONNX Runtime $ORT_VERSION already installed in $dest"
  exit 0
fi
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: python3 with pip is needed to fetch the onnxruntime wheel from PyPI" >&2
  exit 1
fi
case "$(uname -m)" in
  x86_64) plat=manylinux_2_28_x86_64 ;;
  aarch64) plat=manylinux_2_28_aarch64 ;;
  *) echo "error: no onnxruntime wheel for $(uname -m)" >&2; exit 1 ;;
esac
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "Fetching onnxruntime==$ORT_VERSION ($plat) from PyPI..."
"$py" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "$plat" --python-version 3.11 --implementation cp \
  "onnxruntime==$ORT_VERSION" -d "$tmp"
whl="$(ls "$tmp"/onnxruntime-*.whl | head -n1)"
mkdir -p "$dest"
"$py" - "$whl" "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            with z.open(name) as src, open(os.path.join(dest, base + ".part"), "wb") as out:
                out.write(src.read())
            os.replace(os.path.join(dest, base + ".part"), os.path.join(dest, base))
PY
ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest/libonnxruntime.so"
echo "ONNX Runtime $ORT_VERSION installed in $dest"
