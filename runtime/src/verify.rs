//! An export checked before it is run: every path the manifest names stays
//! inside the export directory (no `..`, nothing absolute), is a regular
//! file, and (unless the caller trusts it) has the sha256 the manifest
//! records, hashed on every core; so a corrupted `.onnx.data` is refused
//! with the file's name instead of running. Files hashed once are stamped
//! (in `.flamingo-cache/verified.json` inside the export) by what changes
//! whenever their bytes do, and not hashed again until that changes.

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

/// sha256 (hex) of the file at `path`, read in 4 MiB blocks (faster than
/// a memory map here, and a file truncated under us is an error, not a
/// SIGBUS).
pub fn sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// How [`check`] found the files to be what the manifest says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// At least one file was hashed now.
    Sha256,
    /// Every file was hashed at an earlier load and is unchanged since.
    Stamp,
    /// Hashes were not checked (`--no-verify`).
    Skipped,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verified::Sha256 => "sha256",
            Verified::Stamp => "stamp",
            Verified::Skipped => "skipped",
        })
    }
}

/// Where a load records the files it hashed, inside the export.
pub const CACHE_DIR: &str = ".flamingo-cache";
const STAMPS: &str = "verified.json";

/// What identifies one version of a file without reading it: a write, a
/// rename over it, a copy or a truncation changes at least one of these
/// (ctime is set by the kernel on every change and cannot be set back by
/// a user), so a stamp whose metadata all match names the bytes that were
/// hashed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileId {
    size: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    #[cfg(unix)]
    pub(crate) fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileId {
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
    #[cfg(not(unix))]
    pub(crate) fn of(_: &Path) -> Option<FileId> {
        None
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Stamp {
    id: FileId,
    sha256: String,
}

/// The stamps of `dir`'s files hashed at earlier loads (none when absent
/// or unreadable: then everything is hashed).
fn read_stamps(dir: &Path) -> std::collections::BTreeMap<String, Stamp> {
    let p = dir.join(CACHE_DIR).join(STAMPS);
    match std::fs::read(&p) {
        Ok(b) if b.len() < (16 << 20) => serde_json::from_slice(&b).unwrap_or_default(),
        _ => Default::default(),
    }
}

/// Records `stamps` for the next load: written to a temporary file and
/// renamed. Best effort: an export on a read-only path is hashed each time.
fn write_stamps(dir: &Path, stamps: &std::collections::BTreeMap<String, Stamp>) {
    let cache = dir.join(CACHE_DIR);
    let Ok(json) = serde_json::to_vec_pretty(stamps) else {
        return;
    };
    let tmp = cache.join(format!("{STAMPS}.{}.tmp", std::process::id()));
    let ok = std::fs::create_dir_all(&cache).is_ok()
        && std::fs::write(&tmp, json).is_ok()
        && std::fs::rename(&tmp, cache.join(STAMPS)).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Checks the paths of `m` (the export at `dir`) and, when `hashes`, every
/// file's sha256 against the manifest. A file hashed at an earlier load
/// and unchanged since (its [`FileId`] the same) is not hashed again; the
/// files hashed now are stamped for the next load once they are older
/// than a second (a file changed within the clock's tick of its last
/// change could keep its ctime).
pub fn check(dir: &Path, m: &Manifest, hashes: bool) -> Result<Verified> {
    let mut files = Vec::new();
    for (name, want) in &m.files {
        let p = inside(dir, name)?;
        crate::limits::regular_file(&p, u64::MAX, "")?;
        files.push((name.clone(), p, want.clone()));
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
        return Ok(Verified::Skipped);
    }
    let mut stamps = read_stamps(dir);
    let stamped = |name: &str, want: &str, id: &Option<FileId>| {
        stamps
            .get(name)
            .is_some_and(|s| s.sha256 == want && id.as_ref() == Some(&s.id))
    };
    let mut todo = Vec::new();
    for (name, p, want) in files {
        let id = FileId::of(&p);
        if !stamped(&name, &want, &id) {
            todo.push((name, p, want, id));
        }
    }
    if todo.is_empty() {
        return Ok(Verified::Stamp);
    }
    let started = std::time::SystemTime::now();
    hash_all(&todo)?;
    let settled = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
        - 1_000_000_000;
    let mut changed = false;
    for (name, p, want, id) in todo {
        match id {
            Some(id) if id.ctime_ns < settled && FileId::of(&p).as_ref() == Some(&id) => {
                stamps.insert(name, Stamp { id, sha256: want });
                changed = true;
            }
            _ => {
                stamps.remove(&name);
            }
        }
    }
    stamps.retain(|name, _| m.files.contains_key(name));
    if changed {
        write_stamps(dir, &stamps);
    }
    Ok(Verified::Sha256)
}

/// Hashes `files` (name, path, the manifest's sha256, id), the largest
/// first, spread over the cores; the first mismatch is the error.
fn hash_all(files: &[(String, PathBuf, String, Option<FileId>)]) -> Result<()> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order
        .sort_by_key(|&i| std::cmp::Reverse(std::fs::metadata(&files[i].1).map_or(0, |m| m.len())));
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
                        let Some((_, p, want, _)) = order.get(i).map(|&i| &files[i]) else {
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
