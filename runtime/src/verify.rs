//! An export checked before it is run: every path the manifest names stays
//! inside the export directory (no `..`, nothing absolute), is a regular
//! file, and (unless the caller trusts it) has the sha256 the manifest
//! records, read memory-mapped and hashed on every core; so a corrupted
//! `.onnx.data` is refused with the file's name instead of running.

use std::path::{Component, Path, PathBuf};

use flamingo_contract::Manifest;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// `rel` under `dir`, refused unless it is a plain relative path.
pub fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let plain = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(Error::Input(format!(
            "{}: the manifest names `{rel}`, which is not a path inside the export",
            dir.display()
        )));
    }
    Ok(dir.join(p))
}

/// sha256 (hex) of the file at `path`, memory-mapped.
pub fn sha256(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut h = Sha256::new();
    if len > 0 {
        // SAFETY: read-only; a file truncated under us ends the process
        // like any mmap reader, the check below names a changed file
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        for chunk in map.chunks(8 << 20) {
            h.update(chunk);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks the paths of `m` (the export at `dir`) and, when `hashes`, every
/// file's sha256 against the manifest.
pub fn check(dir: &Path, m: &Manifest, hashes: bool) -> Result<()> {
    let mut files = Vec::new();
    for (name, want) in &m.files {
        let p = inside(dir, name)?;
        crate::limits::regular_file(&p, u64::MAX, "")?;
        files.push((p, want.clone()));
    }
    for (role, g) in &m.graphs {
        for f in std::iter::once(&g.file).chain(g.data_file.as_ref()) {
            inside(dir, f)?;
            if !m.files.contains_key(f) {
                return Err(Error::Input(format!(
                    "{}: the {role} graph's `{f}` has no sha256 in the manifest",
                    dir.display()
                )));
            }
        }
    }
    if !hashes {
        return Ok(());
    }
    // the largest first, spread over the cores
    files.sort_by_key(|(p, _)| std::cmp::Reverse(std::fs::metadata(p).map_or(0, |m| m.len())));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((p, want)) = files.get(i) else {
                            return Ok(());
                        };
                        let got = sha256(p)?;
                        if &got != want {
                            return Err(Error::Input(format!(
                                "{}: corrupted or changed since export (sha256 {got}, the manifest says {want}); \
                                 re-export it, or pass --no-verify to run it as it is",
                                p.display()
                            )));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Input("a hashing thread failed".into())))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Checks that the graph at `path` has the inputs and outputs the
/// manifest's entry `g` says (names, dtypes, shapes), so that a mismatch is
/// named here rather than deep in a backend.
pub fn graph_io(
    path: &Path,
    role: flamingo_contract::GraphRole,
    g: &flamingo_contract::GraphInfo,
) -> Result<()> {
    let (graph, _) = flamingo_graphs::onnx::read(path)?;
    let pairs = [
        ("input", &g.inputs, &graph.inputs),
        ("output", &g.outputs, &graph.outputs),
    ];
    for (what, want, got) in pairs {
        let got: Vec<flamingo_contract::TensorInfo> = got.iter().map(Into::into).collect();
        if want == &got {
            continue;
        }
        let show = |v: &[flamingo_contract::TensorInfo]| {
            v.iter()
                .map(|t| format!("{} {}{:?}", t.name, t.dtype, t.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let first = want
            .iter()
            .zip(&got)
            .find(|(a, b)| a != b)
            .map(|(a, b)| {
                format!(
                    "`{}` in the manifest is `{}` in the graph",
                    show(std::slice::from_ref(a)),
                    show(std::slice::from_ref(b))
                )
            })
            .unwrap_or_else(|| {
                format!(
                    "{} {what}s in the manifest, {} in the graph",
                    want.len(),
                    got.len()
                )
            });
        return Err(Error::Input(format!(
            "{}: the {role} graph's {what}s differ from manifest.json: {first}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_export() {
        let d = Path::new("/m");
        assert_eq!(
            inside(d, "decoder.onnx").unwrap(),
            Path::new("/m/decoder.onnx")
        );
        assert!(inside(d, "tokenizer/tokenizer.json").is_ok());
        for bad in ["../x.onnx", "/etc/passwd", "a/../../b", "", "./a"] {
            assert!(inside(d, bad).is_err(), "{bad}");
        }
    }
}
