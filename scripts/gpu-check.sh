#!/usr/bin/env bash
# End-to-end check of the GPU paths, from a prebuilt release binary and no
# network: exports of-mini with random weights, checks CUDA-vs-CPU parity
# (fp32 logits max abs diff <= 1e-3; fp16 logits cosine >= 0.999), and
# benchmarks ort-cuda fp32/fp16 (and ort-tensorrt fp16/int8 where TensorRT's
# libraries are present), writing JSON results to $OUT.
#
# Usage: scripts/gpu-check.sh [ORT_GPU_LIB_DIR]
#   ORT_GPU_LIB_DIR     directory with libonnxruntime.so* and libonnxruntime_providers_{shared,cuda,tensorrt}.so
#                       (from the onnxruntime-gpu wheel, built for CUDA 13)
#   FLAMINGO_BIN        the binary (default target/release/flamingo, built with --features cuda,tensorrt)
#   GPU_CHECK_BACKEND   ort-cuda (default), or ort-cpu to run everything with the CPU provider standing in
#   OUT                 results directory (default gpu-check-out)
#   STEP_TIMEOUT        seconds per step (default 150)
#   BENCH_FLAGS         bench options (default: batch 1,8, shots 0,2, 16 new tokens; lighter on the CPU stand-in)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${FLAMINGO_BIN:-$root/target/release/flamingo}"
gpu="${GPU_CHECK_BACKEND:-ort-cuda}"
out="${OUT:-gpu-check-out}"
step_timeout="${STEP_TIMEOUT:-150}"
libdir="${1:-${ORT_GPU_LIB_DIR:-}}"
mkdir -p "$out"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" >&2; }
run() { timeout "$step_timeout" "$bin" "$@"; }

[ -x "$bin" ] || { echo "error: $bin not found or not executable (build: cargo build --release -p flamingo --features cuda,tensorrt)" >&2; exit 2; }
if [ -n "$libdir" ]; then
  lib="$(ls "$libdir"/libonnxruntime.so* 2>/dev/null | grep -v providers | head -n1 || true)"
  [ -n "$lib" ] || { echo "error: no libonnxruntime.so in $libdir" >&2; exit 2; }
  export ORT_DYLIB_PATH="$lib"
  # CUDA 13 / cuDNN 9 / cuBLAS / cuRAND / cuFFT from a Python install's nvidia wheels (PyTorch), if any
  extra="$libdir"
  for d in $(python3 -c 'import site,glob,os; [print(p) for s in site.getsitepackages() for p in glob.glob(os.path.join(s,"nvidia","*","lib"))]' 2>/dev/null || true); do
    extra="$extra:$d"
  done
  export LD_LIBRARY_PATH="$extra:${LD_LIBRARY_PATH:-}"
fi
log "binary $bin, backend $gpu, ORT ${ORT_DYLIB_PATH:-(default search)}"
if [ "$gpu" = ort-cpu ]; then
  log "no GPU: the CPU provider stands in for the GPU one"
fi

model="$out/of-mini"
if [ ! -f "$model/manifest.json" ]; then
  log "exporting of-mini (random weights)"
  run export --preset of-mini --random-weights --out "$model" --force --json > "$out/export.json"
fi
[ -f "$model-fp16/manifest.json" ] || run convert --precision fp16 "$model" "$model-fp16" --force > /dev/null

img="$root/tests/fixtures/tiny-mpt/images"
cat > "$out/data.jsonl" <<JSONL
{"prompt": "<image>a photo of", "media": ["$img/img0.png"], "max_new_tokens": 8}
{"prompt": "<image>an apple.<|endofchunk|><image>a man riding", "media": ["$img/img1.png", "$img/img3.png"], "max_new_tokens": 8}
JSONL

log "parity fp32: ort-cpu vs $gpu"
run compare --model "$model" --model "$model" --data "$out/data.jsonl" --backend ort-cpu --backend-b "$gpu" --json > "$out/parity-fp32.json"
log "parity fp16: fp32 on ort-cpu vs fp16 on $gpu"
run compare --model "$model" --model "$model-fp16" --data "$out/data.jsonl" --backend ort-cpu --backend-b "$gpu" --json > "$out/parity-fp16.json"

# the CPU stand-in runs a lighter bench (its fp16 kernels are slow)
if [ "$gpu" = ort-cpu ]; then
  bench_flags="${BENCH_FLAGS:---batch 1,2 --shots 0 --new-tokens 4 --warmup 0 --iters 1}"
else
  bench_flags="${BENCH_FLAGS:---batch 1,8 --shots 0,2 --new-tokens 16 --warmup 1 --iters 3}"
fi
bench() { # name, model, backend, extra flags...
  local name="$1" m="$2" be="$3"; shift 3
  log "bench $name ($bench_flags)"
  # shellcheck disable=SC2086
  run bench --model "$m" --backend "$be" $bench_flags --json "$@" > "$out/bench-$name.json"
}
bench "$gpu-fp32" "$model" "$gpu"
bench "$gpu-fp16" "$model-fp16" "$gpu"
trt=skipped
if [ "$gpu" = ort-cuda ] && ldconfig -p 2>/dev/null | grep -q libnvinfer.so || ls "${libdir:-/nonexistent}"/libnvinfer.so* >/dev/null 2>&1; then
  trt=run
  bench ort-tensorrt-fp16 "$model" ort-tensorrt --trt-fp16
  run calibrate --model "$model" --data "$out/data.jsonl" --out "$model-int8" --force --backend ort-cpu > /dev/null
  bench ort-tensorrt-int8 "$model" ort-tensorrt --trt-int8 --trt-calibration "$model-int8/calibration"
else
  log "TensorRT libraries not found: ort-tensorrt benches skipped"
fi

python3 - "$out" "$gpu" "$trt" <<'PY'
import json, sys, os
out, gpu, trt = sys.argv[1], sys.argv[2], sys.argv[3]
p32 = json.load(open(os.path.join(out, "parity-fp32.json")))
p16 = json.load(open(os.path.join(out, "parity-fp16.json")))
summary = {"backend": gpu, "cpu_stand_in": gpu == "ort-cpu", "tensorrt": trt,
           "fp32_logits_max_abs": p32["logits"]["max_abs"], "fp16_logits_cosine_min": p16["logits"]["cosine_min"]}
for name in sorted(os.listdir(out)):
    if name.startswith("bench-"):
        b = json.load(open(os.path.join(out, name)))
        summary[name[6:-5]] = [{"shots": d["shots"], "batch": d["batch"], "ttft_ms": round(d["time_to_first_token_ms"], 2),
                                "decode_p50_ms": round(d["decode"]["p50_ms"], 3), "tokens_per_s": round(d["tokens_per_s"], 1)}
                               for d in b["decode"]]
ok = summary["fp32_logits_max_abs"] <= 1e-3 and summary["fp16_logits_cosine_min"] >= 0.999
summary["parity_ok"] = ok
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
sys.exit(0 if ok else 1)
PY
