#!/usr/bin/env bash
# Benchmarks `flamingo serve` on an export (e.g. of-mini): continuous
# batching (--max-batch 16) against one request at a time (--max-batch 1),
# and the prefix cache on against off, at 1, 4 and 16 clients, with the
# official openai client (scripts/bench-serve.py). Servers bind 127.0.0.1
# and are stopped at the end whatever happens.
#
#   scripts/bench-serve.sh MODEL_DIR [BACKEND] [REQUESTS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="$1"; backend="${2:-ort-cpu}"; requests="${3:-32}"
cd "$root"
scripts/install-ort.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"
if [ ! -x .venv-test/bin/python ]; then
  python3 -m venv .venv-test && .venv-test/bin/pip install --quiet "openai==2.54.0"
fi
bin="${FLAMINGO_BIN:-$root/target/release/flamingo}"
images=(tests/fixtures/tiny-mpt/images/img{0,1,2,3}.png)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
run() { # label, python args..., then serve args after --
  local label="$1"; shift
  local py=(); while [ "$1" != "--" ]; do py+=("$1"); shift; done; shift
  "$bin" serve --model "$model" --backend "$backend" --host 127.0.0.1 --port 18777 \
    --served-model-name bench --max-tokens 64 "$@" > /tmp/bench-serve.log 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf 127.0.0.1:18777/ready > /dev/null && break; sleep 0.2; done
  .venv-test/bin/python scripts/bench-serve.py http://127.0.0.1:18777/v1 bench "${images[@]}" \
    --requests "$requests" "${py[@]}" | sed "s/^/{\"run\": \"$label\", \"r\": /; s/\$/}/"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}
run continuous --clients 1,4,16 -- --max-batch 16
run one-at-a-time --clients 1,4,16 -- --max-batch 1
run prefix-off --clients 1 -- --max-batch 16 --prefix-cache-bytes 0
run prefix-on --clients 1 -- --max-batch 16
run distinct-supports --clients 16 --distinct -- --max-batch 16
