#!/usr/bin/env bash
# The main job on a fresh machine: build the CLI, export a model to ONNX and
# generate from images with the embedded tract backend (nothing else to install).
# Usage: scripts/quickstart.sh [FIXTURE_DIR] [OUT_DIR]
#   FIXTURE_DIR: a release-layout dir (clip/, lm/, checkpoint.pt, tokenizer/,
#                flamingo.json); defaults to the bundled tiny MPT model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-$root/tests/fixtures/tiny-mpt}"
out="${2:-$root/out/$(basename "$src")}"
cd "$root"
cargo build --release -p flamingo
bin="$root/target/release/flamingo"
n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cross_attn_every_n_layers"])' "$src/flamingo.json" 2>/dev/null || echo 1)
"$bin" export --clip "$src/clip/open_clip_pytorch_model.bin" --lm "$src/lm" \
  --checkpoint "$src/checkpoint.pt" --tokenizer "$src/tokenizer" \
  --cross-attn-every-n-layers "$n" --out "$out" --force
"$bin" inspect "$out"
echo "--- few-shot generation (tract):"
"$bin" generate --model "$out" \
  --prompt "<image>an apple on a table.<|endofchunk|><image>a photo of" \
  --image "$src/images/img1.png" --image "$src/images/img0.png" --max-new-tokens 10 --json
