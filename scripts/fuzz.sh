#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo fuzz) of every reader an
# attacker can feed. Each target runs until 10^6 executions or the time
# limit, whichever comes first, with a 1 s per-input timeout and a 2 GB
# memory limit; its corpus (fuzz/corpus/TARGET) is then minimized in
# place. A crash, timeout or out-of-memory input is left in
# fuzz/artifacts/TARGET/; once fixed, copy it into fuzz/regressions/TARGET/
# so the CI replay (tests/tests/fuzz_corpus.rs) keeps it fixed.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   defaults: 1800 s and every target; FUZZ_RUNS (10^6) in the environment.
#   A summary goes to FUZZ_SUMMARY (fuzz/last-run.txt); run two instances
#   on disjoint targets (each with its own FUZZ_SUMMARY) to use two cores.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain
# builds the targets with RUSTC_BOOTSTRAP=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"
secs="${1:-1800}"
shift || true
runs="${FUZZ_RUNS:-1000000}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pickle checkpoint safetensors shard_index onnx configs tokenizer image jsonl)
fi
command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 1
}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O -s none
bin="$root/fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
mkdir -p logs
summary="${FUZZ_SUMMARY:-$root/fuzz/last-run.txt}"
: >"$summary"
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    echo "fuzzing $t: up to $runs runs or $secs s" >&2
    set +e
    "$bin/$t" -runs="$runs" -max_total_time="$secs" -timeout=1 -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        "corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs_run=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    slowest=$(sed -n 's/^stat::slowest_unit_time_sec: *//p' "$log" | tail -1)
    found=$(find "artifacts/$t" -type f | wc -l)
    # minimize: keep only inputs that add coverage
    rm -rf "corpus/$t.min" && mkdir "corpus/$t.min"
    "$bin/$t" -merge=1 -timeout=1 -rss_limit_mb=2048 "corpus/$t.min" "corpus/$t" >"logs/$t.merge.log" 2>&1
    rm -rf "corpus/$t" && mv "corpus/$t.min" "corpus/$t"
    files=$(find "corpus/$t" -type f | wc -l)
    line="$t: ${execs:-?} executions in ${secs_run:-?} s, cov ${cov:-?} edges, ft ${ft:-?} features, peak RSS ${peak:-?} MB, slowest input ${slowest:-?} s, corpus $files files, exit $rc, $found artifact(s)"
    echo "$line" | tee -a "$summary" >&2
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
        status=1
    fi
done
exit $status
