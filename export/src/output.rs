//! Output directories written atomically: everything goes into a hidden
//! temporary sibling (`.NAME.partial-PID`, same filesystem) that is renamed
//! into place only once complete. A guard that is dropped without
//! [`OutputDir::commit`] removes its temporary, so a failed run leaves
//! nothing; [`remove_partials`] removes the live ones when a signal ends the
//! process, and leftovers of killed runs (their process gone) are removed
//! when the next one starts. Used by every command that writes an export.
//!
//! An existing output is replaced only with `force`, only when it is an
//! export this tool wrote (its `manifest.json` says `flamingo` produced it),
//! and never when it holds, or lies inside, one of the run's inputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};

/// A directory being written; see the module docs.
#[must_use = "an output directory that is not committed is removed"]
pub struct OutputDir {
    out: PathBuf,
    tmp: PathBuf,
    done: bool,
}

/// The temporary directories being written by this process.
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Marks `dir` as this process's work in progress: [`remove_partials`]
/// removes it (scratch copies, such as calibration's instrumented graphs).
pub fn track_partial(dir: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(dir.to_path_buf());
    }
}

/// Forgets a directory [`track_partial`] marked (it is removed or kept).
pub fn untrack_partial(dir: &Path) {
    forget(dir);
}

/// Removes every output directory this process is still writing (a signal
/// handler calls it before exiting).
pub fn remove_partials() {
    if let Ok(live) = LIVE.lock() {
        for p in live.iter() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl OutputDir {
    /// Starts writing `out`, whose run reads `inputs`: see the module docs
    /// for when an existing `out` may be replaced.
    pub fn create(out: &Path, force: bool, inputs: &[&Path]) -> Result<OutputDir> {
        check_replaceable(out, force, inputs)?;
        let tmp = temp_dir_for(out)?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(tmp.clone());
        }
        Ok(OutputDir {
            out: out.to_path_buf(),
            tmp,
            done: false,
        })
    }

    /// Where to write (the temporary directory).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished directory into place, replacing an existing one
    /// only now that the new one is complete.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        forget(&self.tmp);
        let (tmp, out) = (&self.tmp, &self.out);
        if out.exists() {
            let old = tmp.with_extension("old");
            fs::rename(out, &old).map_err(io_err(out))?;
            fs::rename(tmp, out).map_err(io_err(out))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(tmp, out).map_err(io_err(out))?;
        }
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
            forget(&self.tmp);
        }
    }
}

fn forget(tmp: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| p != tmp);
    }
}

/// Whether `dir` is an export (or calibration output) this tool wrote.
fn written_by_us(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(flamingo_contract::manifest::FILE_NAME)) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|m| {
            m.get("producer")?
                .as_str()
                .map(|p| p.starts_with("flamingo "))
        })
        .unwrap_or(false)
}

/// Refuses to replace `out` unless it may be (see the module docs).
pub fn check_replaceable(out: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    let meta = match fs::symlink_metadata(out) {
        Err(_) => return Ok(()),
        Ok(m) => m,
    };
    let refuse = |why: String| Error::Config {
        path: out.display().to_string(),
        message: format!("refusing to replace it: {why}"),
    };
    if !force {
        return Err(Error::OutputExists {
            path: out.display().to_string(),
        });
    }
    if !meta.is_dir() {
        return Err(refuse(
            "it is not a directory (a file, link or device); remove it yourself".into(),
        ));
    }
    let canon = |p: &Path| fs::canonicalize(p).ok();
    let o = canon(out).ok_or_else(|| refuse("it cannot be resolved".into()))?;
    for input in inputs {
        let Some(i) = canon(input) else { continue };
        if i.starts_with(&o) {
            return Err(refuse(format!(
                "it holds an input of this run ({})",
                input.display()
            )));
        }
        if o.starts_with(&i) {
            return Err(refuse(format!(
                "it lies inside an input of this run ({})",
                input.display()
            )));
        }
    }
    if !written_by_us(out) {
        return Err(refuse(
            "it is not an export written by flamingo (no manifest.json of ours); remove it yourself if it should go"
                .into(),
        ));
    }
    Ok(())
}

/// A fresh temporary directory beside `out` (same filesystem, so rename works).
fn temp_dir_for(out: &Path) -> Result<PathBuf> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    // leftovers of interrupted runs (their process is gone) are removed
    if let Ok(entries) = fs::read_dir(&parent) {
        let prefix = format!(".{name}.partial-");
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = file
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// sha256 of every file under `dir` but the manifest (relative names,
/// `/`-separated).
pub fn hash_files(root: &Path, dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(hash_files(root, &p)?);
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .replace('\\', "/");
        if rel == flamingo_contract::manifest::FILE_NAME {
            continue;
        }
        out.insert(rel, sha256_file(&p)?);
    }
    Ok(out)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_output_leaves_nothing_and_a_committed_one_replaces() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("model");
        {
            let o = OutputDir::create(&out, false, &[]).unwrap();
            fs::write(o.path().join("a"), "new").unwrap();
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
        fs::create_dir(&out).unwrap();
        fs::write(out.join("old"), "old").unwrap();
        assert!(
            OutputDir::create(&out, false, &[]).is_err(),
            "exists, no force"
        );
        // not ours: refused even with force, and left alone
        let e = OutputDir::create(&out, true, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an export written by flamingo"), "{e}");
        assert!(out.join("old").exists());
        fs::write(
            out.join("manifest.json"),
            r#"{"producer": "flamingo 0.1.0"}"#,
        )
        .unwrap();
        // an input inside it, or it inside an input: refused
        let input = out.join("old");
        let e = OutputDir::create(&out, true, &[&input])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds an input"), "{e}");
        let e = OutputDir::create(&out, true, &[root.path()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("inside an input"), "{e}");
        let o = OutputDir::create(&out, true, &[]).unwrap();
        fs::write(o.path().join("a"), "new").unwrap();
        o.commit().unwrap();
        assert!(out.join("a").exists() && !out.join("old").exists());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
