//! ONNX Runtime sessions created from many threads at once, each time in a
//! fresh process: the first commits in a process register this runtime's
//! `ai.flamingo` operator domain in ONNX Runtime's process-wide map, which
//! ONNX Runtime checks and then adds to without a lock.

use anyhow::{bail, Context, Result};
use flamingo_runtime::BackendKind;
use flamingo_tests::*;
use std::path::Path;
use std::sync::Barrier;

/// Set in the child processes: the export whose graphs they load.
const CHILD: &str = "FLAMINGO_TEST_CONCURRENT_LOADS";
const TEST: &str = "first_sessions_load_from_many_threads_at_once";

/// Loads the export's graphs from `threads` threads released together.
fn load_at_once(dir: &Path, threads: usize) -> Result<()> {
    let graphs = ["vision_encoder.onnx", "resampler.onnx", "decoder.onnx"];
    let start = Barrier::new(threads);
    let loaded: Vec<Result<String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let path = dir.join(graphs[i % graphs.len()]);
                let start = &start;
                sc.spawn(move || -> Result<String> {
                    let backend = BackendKind::OrtCpu.create();
                    start.wait();
                    Ok(backend?.load(&path)?.provider())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a loading thread panicked"))?
            })
            .collect()
    });
    for (i, r) in loaded.into_iter().enumerate() {
        let provider = r.with_context(|| format!("thread {i}"))?;
        assert_eq!(provider, "ort:CPUExecutionProvider", "thread {i}");
    }
    Ok(())
}

#[test]
fn first_sessions_load_from_many_threads_at_once() -> Result<()> {
    if let Some(dir) = std::env::var_os(CHILD) {
        return load_at_once(Path::new(&dir), 16);
    }
    let dir = exported("tiny-mpt")?;
    // the race is narrow: without the lock about one fresh process in thirty failed
    let rounds = 40;
    let exe = std::env::current_exe()?;
    for round in 0..rounds {
        let out = std::process::Command::new(&exe)
            .args([TEST, "--exact", "--test-threads", "1"])
            .env(CHILD, &dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "round {round} of {rounds}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}
