#!/usr/bin/env bash
# Serves the tiny model through Triton Inference Server and drives it with
# tritonclient: exports the tiny-llama fixture and writes its repositories,
# starts the `tritonserver` of the nvidia-pytriton wheel (PyPI) on
# 127.0.0.1, and checks HTTP, gRPC, a streamed request, 16 concurrent
# requests (batched) and bad input against `flamingo generate`:
#  1. `--kind cpu`, two CPU instances;
#  2. `--kind gpu`: its configs parsed as Triton's ModelConfig and matched
#     against the manifest, then served with its onnxruntime-backend models
#     swapped for CPU stand-ins running the same ONNX files through
#     onnxruntime from PyPI (scripts/triton_gpu_repo.py), so that its
#     orchestrator runs end to end without a GPU.
# Each server is stopped whatever happens; the whole check is bounded
# (TRITON_CHECK_TIMEOUT, default 180 s).
#   scripts/triton-check.sh [WHEEL]   (default: builds it with scripts/python-wheel.sh --dev)
# Environment: FLAMINGO_BIN (default target/debug/flamingo, built if missing),
# VENV (default .venv-test), TRITON_CHECK_REPORT (where the counters go).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv-test}"
bin="${FLAMINGO_BIN:-$root/target/debug/flamingo}"
[ -x "$bin" ] || cargo build -p flamingo
wheel="${1:-}"
[ -n "$wheel" ] || wheel="$(scripts/python-wheel.sh --dev | tail -1)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import pytriton, tritonclient.grpc, tritonclient.http, onnxruntime" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-pytriton==0.7.0" "tritonclient[all]==2.73.0" "onnxruntime==1.31.1"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"

work="$(mktemp -d "${TMPDIR:-/tmp}/flamingo-triton.XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
deadline=$(( $(date +%s) + ${TRITON_CHECK_TIMEOUT:-180} ))
left() { echo $(( deadline - $(date +%s) )); }

fx="$root/tests/fixtures/tiny-llama"
"$bin" export --clip "$fx/clip/open_clip_pytorch_model.bin" --lm "$fx/lm" \
  --checkpoint "$fx/checkpoint.pt" --tokenizer "$fx/tokenizer" \
  --cross-attn-every-n-layers 2 --out "$work/export" >/dev/null
"$bin" export-triton --model "$work/export" --out "$work/repo-cpu" --kind cpu \
  --instances 2 --max-batch 8 --max-queue-delay-us 20000 --backend tract >/dev/null
"$bin" export-triton --model "$work/export" --out "$work/repo-gpu" --kind gpu \
  --instances 1 --orchestrators 2 --max-batch 8 --max-queue-delay-us 20000 >/dev/null
"$venv/bin/python" scripts/triton_gpu_repo.py check "$work/repo-gpu" "$work/export"
"$venv/bin/python" scripts/triton_gpu_repo.py emulate "$work/repo-gpu" "$work/repo-gpu-emulated"

# the reference: flamingo generate --json for each request
"$venv/bin/python" - "$bin" "$work/export" "$fx" "$work/reference.json" <<'PY'
import json, subprocess, sys
bin, export, fx, out = sys.argv[1:]
img = lambda i: f"{fx}/images/img{i}.png"
reqs = [
    {"prompt": "<image>a photo of", "images": [img(0)], "max_tokens": 10},
    {"prompt": "<image>an apple on a table.<|endofchunk|><image>a photo of", "images": [img(1), img(0)], "max_tokens": 8},
    {"prompt": "output: <image>two dogs.<|endofchunk|><image>a man riding<|endofchunk|><image>caption:", "images": [img(2), img(3), img(1)], "max_tokens": 12},
    {"prompt": "a text-only prompt", "images": [], "max_tokens": 6},
]
for r in reqs:
    cmd = [bin, "generate", "--model", export, "--prompt", r["prompt"], "--json", "--max-new-tokens", str(r["max_tokens"])]
    for p in r["images"]:
        cmd += ["--image", p]
    g = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    r.update(generated_ids=g["generated_ids"], text=g["text"])
json.dump({"requests": reqs}, open(out, "w"))
PY

sp="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
tri="$sp/pytriton/tritonserver"
pyver="$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
be="$work/backends"
mkdir -p "$be/python"
cp "$tri/backends/python/libtriton_python.so" "$tri/backends/python/triton_python_backend_utils.py" "$be/python/"
cp "$tri/python_backend_stubs/$pyver/triton_python_backend_stub" "$be/python/"
chmod +x "$be/python/triton_python_backend_stub"
libdir="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"

# serve REPO NAME: starts tritonserver on REPO, runs the checks, stops it
serve() {
  local repo="$1" name="$2" http grpc metrics
  read -r http grpc metrics < <("$venv/bin/python" -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
  PATH="$venv/bin:$PATH" CUDA_VISIBLE_DEVICES="" \
  LD_LIBRARY_PATH="$libdir:$sp/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$tri/bin/tritonserver" --model-repository="$repo" --backend-directory="$be" \
    --http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1 \
    --http-port="$http" --grpc-port="$grpc" --metrics-port="$metrics" \
    --exit-timeout-secs=5 >"$work/server-$name.log" 2>&1 &
  server_pid=$!
  until "$venv/bin/python" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)" \
      "http://127.0.0.1:$http/v2/health/ready" 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ "$(left)" -le 0 ]; then
      echo "triton-check ($name): the server did not become ready; its log:" >&2
      tail -50 "$work/server-$name.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "triton-check ($name): tritonserver ready on 127.0.0.1:$http (HTTP), :$grpc (gRPC)"
  local report="${TRITON_CHECK_REPORT:-$work/report}-$name.json"
  if ! timeout "$(left)" "$venv/bin/python" scripts/triton_check.py "$http" "$grpc" "$metrics" \
      "$work/reference.json" "$report"; then
    echo "triton-check ($name): FAILED; the server's log:" >&2
    tail -50 "$work/server-$name.log" >&2
    exit 1
  fi
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$server_pid" 2>/dev/null || true
  server_pid=""
  echo "triton-check ($name): passed"
}
serve "$work/repo-cpu" cpu
serve "$work/repo-gpu-emulated" gpu-emulated
