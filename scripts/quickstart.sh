#!/usr/bin/env bash
# The main job on a fresh machine: build the CLI, export a model to ONNX and
# generate from images with the embedded tract backend (nothing else to install).
# Usage: scripts/quickstart.sh [FIXTURE_DIR] [OUT_DIR]
#   FIXTURE_DIR: a release-layout dir (clip/, lm/, checkpoint.pt, optional
#                tokenizer/); defaults to the bundled tiny MPT model
#                (tests/fixtures/tiny-mosaic ships as OpenFlamingo-3B does).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-$root/tests/fixtures/tiny-mpt}"
out="${2:-$root/out/$(basename "$src")}"
cd "$root"
cargo build --release -p flamingo
bin="$root/target/release/flamingo"
if [ -f "$src/clip/open_clip_pytorch_model.bin" ]; then
  clip="$src/clip/open_clip_pytorch_model.bin"
else
  clip="$src/clip"   # a directory: its weights file is found inside (e.g. OpenAI's TorchScript model.pt)
fi
tok=()
[ -d "$src/tokenizer" ] && tok=(--tokenizer "$src/tokenizer")   # else the LM repo's own
# the cross-attention interval is read from checkpoint.pt
"$bin" export --clip "$clip" --lm "$src/lm" --checkpoint "$src/checkpoint.pt" "${tok[@]}" \
  --out "$out" --force
"$bin" inspect "$out"
echo "--- few-shot generation (tract):"
"$bin" generate --model "$out" \
  --prompt "<image>an apple on a table.<|endofchunk|><image>a photo of" \
  --image "$src/images/img1.png" --image "$src/images/img0.png" --max-new-tokens 10 --json
