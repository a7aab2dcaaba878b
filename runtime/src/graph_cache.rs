//! The optimised-graph cache beside an export (`DIR/.flamingo-cache/`):
//! a backend that spends its load optimising a graph (ONNX Runtime
//! prepacking the weights of every MatMul) saves the result once and
//! loads it from there afterwards.
//!
//! An entry is named by a hash of everything its content depends on: the
//! graph's and its data's verified sha256s, the backend and its exact
//! build, and the CPU's features (prepacked layouts follow the kernels the
//! CPU selects). Any change gives another name, so an entry is never
//! served for another graph, runtime or machine; the entry of a role made
//! for an earlier key is removed when the new one is saved. An entry is
//! built in a staging directory and renamed into place whole, and records
//! the [`FileId`] of each of its files: one changed or truncated after it
//! was saved is discarded and rebuilt, never loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::backend::GraphKey;
use crate::verify::FileId;

const ENTRY: &str = "entry.json";
const SCHEMA: &str = "flamingo optimised-graph cache v1";

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    id: String,
    files: BTreeMap<String, FileId>,
}

/// The identity of `key`'s entry for `engine` at `engine_build` (a
/// version string that changes with the engine's build).
pub(crate) fn id(key: &GraphKey, engine: &str, engine_build: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        SCHEMA,
        engine,
        engine_build,
        &cpu_signature(),
        &key.role.to_string(),
        &key.sha256,
        key.data_sha256.as_deref().unwrap_or("-"),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the entry `id` of `key` for `engine` lives.
pub(crate) fn entry_dir(key: &GraphKey, engine: &str, id: &str) -> PathBuf {
    key.dir
        .join(engine)
        .join(format!("{}-{}", key.role, &id[..16]))
}

/// Whether `entry` holds a complete entry `id` whose files are as saved.
pub(crate) fn valid(entry: &Path, id: &str) -> bool {
    let Ok(bytes) = std::fs::read(entry.join(ENTRY)) else {
        return false;
    };
    let Ok(e) = serde_json::from_slice::<Entry>(&bytes) else {
        return false;
    };
    if e.id != id {
        return false;
    }
    let Ok(listing) = std::fs::read_dir(entry) else {
        return false;
    };
    let mut present = 0;
    for f in listing.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name == ENTRY {
            continue;
        }
        match e.files.get(&name) {
            Some(want) if FileId::of(&f.path()).as_ref() == Some(want) => present += 1,
            _ => return false,
        }
    }
    present == e.files.len() && present > 0
}

/// A fresh staging directory for an entry of `key` for `engine`; removes
/// those left by processes that no longer run.
pub(crate) fn staging(key: &GraphKey, engine: &str) -> std::io::Result<PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let root = key.dir.join(engine);
    std::fs::create_dir_all(&root)?;
    if let Ok(listing) = std::fs::read_dir(&root) {
        for f in listing.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(".tmp-").and_then(|r| r.split('-').next());
            if let Some(pid) = pid {
                if cfg!(target_os = "linux") && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(f.path());
                }
            }
        }
    }
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = root.join(format!(".tmp-{}-{}-{n}", std::process::id(), key.role));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    Ok(tmp)
}

/// Records the files of the staging directory `tmp` and renames it to
/// `entry` (the entry `id`); removes the role's entries for other keys.
/// Another process that saved the same entry first wins; `tmp` is then
/// removed.
pub(crate) fn commit(tmp: &Path, entry: &Path, id: &str) -> std::io::Result<()> {
    let mut files = BTreeMap::new();
    for f in std::fs::read_dir(tmp)?.flatten() {
        let id = FileId::of(&f.path())
            .ok_or_else(|| std::io::Error::other(format!("{}: no metadata", f.path().display())))?;
        files.insert(f.file_name().to_string_lossy().into_owned(), id);
    }
    let e = Entry {
        id: id.to_string(),
        files,
    };
    std::fs::write(
        tmp.join(ENTRY),
        serde_json::to_vec_pretty(&e).map_err(std::io::Error::other)?,
    )?;
    if let (Some(root), Some(name)) = (entry.parent(), entry.file_name()) {
        let name = name.to_string_lossy();
        let role = name.rsplit_once('-').map_or("", |(r, _)| r);
        for f in std::fs::read_dir(root)?.flatten() {
            let other = f.file_name().to_string_lossy().into_owned();
            if other != name && other.rsplit_once('-').is_some_and(|(r, _)| r == role) {
                let _ = std::fs::remove_dir_all(f.path());
            }
        }
    }
    if valid(entry, id) {
        discard(tmp);
        return Ok(());
    }
    discard(entry);
    match std::fs::rename(tmp, entry) {
        Ok(()) => Ok(()),
        Err(e) => {
            discard(tmp);
            Err(e)
        }
    }
}

/// Removes an entry or a staging directory (best effort).
pub(crate) fn discard(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The CPU's model and feature flags (what a backend's kernels and their
/// prepacked layouts are chosen by).
fn cpu_signature() -> String {
    static SIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SIG.get_or_init(|| {
        let mut sig = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            for key in ["vendor_id", "model name", "flags", "Features", "CPU part"] {
                let line = info
                    .lines()
                    .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key));
                if let Some(l) = line {
                    sig.push('\n');
                    sig.push_str(l.trim());
                }
            }
        }
        sig
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path, sha: &str) -> GraphKey {
        GraphKey {
            dir: dir.to_path_buf(),
            role: flamingo_contract::GraphRole::Decoder,
            sha256: sha.into(),
            data_sha256: None,
        }
    }

    #[test]
    fn an_entry_is_valid_until_a_file_of_it_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let k = key(tmp.path(), "aa");
        let id = id(&k, "ort", "1.31.1");
        assert_ne!(id, super::id(&key(tmp.path(), "ab"), "ort", "1.31.1"));
        assert_ne!(id, super::id(&k, "ort", "1.32.0"));
        let entry = entry_dir(&k, "ort", &id);
        assert!(!valid(&entry, &id));
        let stage = staging(&k, "ort").unwrap();
        std::fs::write(stage.join("graph.onnx"), b"graph").unwrap();
        std::fs::write(stage.join("graph.onnx.data"), b"weights").unwrap();
        commit(&stage, &entry, &id).unwrap();
        assert!(!stage.exists());
        assert!(valid(&entry, &id));
        assert!(!valid(
            &entry,
            &super::id(&key(tmp.path(), "ab"), "ort", "1.31.1")
        ));
        // a truncated, extra or missing file invalidates it
        std::fs::write(entry.join("graph.onnx.data"), b"weigh").unwrap();
        assert!(!valid(&entry, &id));
        let stage = staging(&k, "ort").unwrap();
        std::fs::write(stage.join("graph.onnx"), b"graph").unwrap();
        commit(&stage, &entry, &id).unwrap();
        assert!(valid(&entry, &id));
        std::fs::write(entry.join("stray"), b"").unwrap();
        assert!(!valid(&entry, &id));
        std::fs::remove_file(entry.join("stray")).unwrap();
        std::fs::remove_file(entry.join("graph.onnx")).unwrap();
        assert!(!valid(&entry, &id));
    }

    #[test]
    fn a_new_key_replaces_the_roles_old_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let (k1, k2) = (key(tmp.path(), "aa"), key(tmp.path(), "bb"));
        let (id1, id2) = (id(&k1, "ort", "v"), id(&k2, "ort", "v"));
        let (e1, e2) = (entry_dir(&k1, "ort", &id1), entry_dir(&k2, "ort", &id2));
        for (e, id) in [(&e1, &id1), (&e2, &id2)] {
            let stage = staging(&k1, "ort").unwrap();
            std::fs::write(stage.join("graph.onnx"), id.as_bytes()).unwrap();
            commit(&stage, e, id).unwrap();
        }
        assert!(!e1.exists());
        assert!(valid(&e2, &id2));
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("ort")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
