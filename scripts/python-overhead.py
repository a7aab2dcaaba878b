"""The Python package's overhead per decode step against Rust: the same
`Pipeline::generate` (prompt, 640x480 image, greedy, 1 and 1 + N new tokens)
timed through `flamingo.Pipeline` and through `flamingo bench
--generate-tokens`, alternately (Rust, Python, Rust, Python, ...), so that
drift on a busy machine hits both alike.

usage: python-overhead.py FLAMINGO_BIN MODEL [BACKEND] [N] [ROUNDS] [WARMUP] [ITERS]
"""

import json
import statistics
import subprocess
import sys
import time

import numpy as np

import flamingo

bin, model = sys.argv[1], sys.argv[2]
backend = sys.argv[3] if len(sys.argv) > 3 else "ort-cpu"
n = int(sys.argv[4]) if len(sys.argv) > 4 else 32
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 3
warmup = int(sys.argv[6]) if len(sys.argv) > 6 else 3
iters = int(sys.argv[7]) if len(sys.argv) > 7 else 5
PROMPT = "<image>A photo of"  # cli/src/bench.rs GENERATE_PROMPT
# the bench's synthetic 640x480 image, pixel for pixel
img = (np.arange(640 * 480 * 3, dtype=np.int64) * 31 % 251).astype(np.uint8).reshape(480, 640, 3)

p = flamingo.Pipeline(model, backend=backend)


def run(tokens):
    t = time.perf_counter()
    g = p.generate(PROMPT, [img], max_new_tokens=tokens, stop_tokens=[2**32 - 1])
    ms = (time.perf_counter() - t) * 1e3
    assert len(g.generated_ids) == tokens
    return ms


def python_round():
    for _ in range(warmup):
        run(n)
    one, full = [], []
    for _ in range(iters):
        one.append(run(1))
        full.append(run(n))
    return (statistics.median(full) - statistics.median(one)) / (n - 1)


def rust_round():
    out = subprocess.run(
        [bin, "bench", "--model", model, "--backend", backend, "--shots", "0", "--batch", "1",
         "--new-tokens", "2", "--generate-tokens", str(n), "--warmup", str(warmup),
         "--iters", str(iters), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["generate"]["per_token_ms"]


py, rs = [], []
for _ in range(rounds):
    rs.append(rust_round())
    py.append(python_round())
    print(f"round: Rust {rs[-1]:.2f} ms/token, Python {py[-1]:.2f} ms/token", file=sys.stderr)
r, q = statistics.median(rs), statistics.median(py)
print(json.dumps({
    "model": model, "backend": backend, "new_tokens": n, "rounds": rounds,
    "warmup": warmup, "iters": iters,
    "rust_per_token_ms": r, "python_per_token_ms": q, "overhead": q / r - 1,
    "rust_rounds": rs, "python_rounds": py,
}))
