//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`, kept
//! minimized by `scripts/fuzz.sh`) and every input a fuzzer ever crashed
//! on (`fuzz/regressions/<target>/`) through the same code the libFuzzer
//! targets run: none may panic. The fuzzers themselves are not in CI; this
//! is what keeps their findings fixed.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_fuzz_corpus_and_regression_input_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    // a panic's message is printed by the hook; keep the output readable
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for target in harness::TARGETS {
        let corpus = files(&root.join("corpus").join(target));
        let regressions = files(&root.join("regressions").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty: seed it with fuzz/seeds.py"
        );
        counts.push(format!("{target} {}+{}", corpus.len(), regressions.len()));
        for f in corpus.iter().chain(&regressions) {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| harness::run(target, &data));
            if let Err(e) = r {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target}: {}: {msg}", f.display()));
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("replayed (corpus+regressions): {}", counts.join(", "));
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}
