//! Cold start: the files' sha256 stamps and the optimised-graph cache
//! (`DIR/.flamingo-cache/`). What the cache serves equals what the graphs
//! give; a changed export, a changed cache file or a changed file hashed
//! at an earlier load is never served stale.

use std::path::{Path, PathBuf};

use anyhow::Result;
use flamingo_contract::GraphRole;
use flamingo_runtime::{BackendKind, LoadOptions, Model};
use flamingo_tests::*;

/// A private copy of `fx`'s export without a cache.
fn private_export(fx: &str, tag: &str) -> Result<PathBuf> {
    let dst = scratch().join(format!("load-{fx}-{tag}"));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&exported(fx)?, &dst)?;
    let _ = std::fs::remove_dir_all(dst.join(flamingo_runtime::verify::CACHE_DIR));
    Ok(dst)
}

fn load(dir: &Path, backend: BackendKind, no_graph_cache: bool) -> Result<Model> {
    let opts = LoadOptions {
        no_graph_cache,
        ..Default::default()
    };
    Ok(Model::load_opts(dir, backend, &opts)?)
}

/// How each graph's session was made.
fn cache_uses(m: &Model) -> Vec<(GraphRole, String)> {
    m.load_times
        .graphs
        .iter()
        .map(|g| (g.role, g.cache.clone()))
        .collect()
}

fn all(m: &Model, what: &str) -> bool {
    m.load_times.graphs.len() == 4 && m.load_times.graphs.iter().all(|g| g.cache == what)
}

fn assert_same(
    a: &[(String, ndarray::ArrayD<f32>)],
    b: &[(String, ndarray::ArrayD<f32>)],
    what: &str,
) {
    assert_eq!(a.len(), b.len(), "{what}");
    assert!(!a.is_empty(), "{what}: no cases");
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape(), "{what} {name}");
        let d = max_abs_diff(x, y).unwrap_or(f32::INFINITY);
        assert_eq!(d, 0.0, "{what} {name}: max abs diff {d}");
    }
}

/// On ONNX Runtime CPU every graph is optimised and saved at the first
/// load and served from the cache at the next; the logits (vision
/// encoder, resampler, media K/V and decoder on the fixtures' images) are
/// bit-identical to an uncached load's (which the golden tests hold to the
/// references). tract keeps no cache.
#[test]
fn the_graph_cache_serves_what_the_graphs_give() -> Result<()> {
    for fx in FIXTURES {
        let dir = private_export(fx, "serve")?;
        let mut plain = load(&dir, BackendKind::OrtCpu, true)?;
        assert!(all(&plain, "off"), "{fx}: {:?}", cache_uses(&plain));
        let want = case_logits(&mut plain, fx)?;
        drop(plain);
        let mut built = load(&dir, BackendKind::OrtCpu, false)?;
        assert!(all(&built, "built"), "{fx}: {:?}", cache_uses(&built));
        assert_same(&want, &case_logits(&mut built, fx)?, &format!("{fx} built"));
        drop(built);
        let mut hit = load(&dir, BackendKind::OrtCpu, false)?;
        assert!(all(&hit, "hit"), "{fx}: {:?}", cache_uses(&hit));
        assert_same(&want, &case_logits(&mut hit, fx)?, &format!("{fx} hit"));
        let tract = load(&dir, BackendKind::Tract, false)?;
        assert!(all(&tract, "off"), "{fx}: {:?}", cache_uses(&tract));
    }
    Ok(())
}

/// The entries a cache holds, by name.
fn entries(dir: &Path) -> Vec<String> {
    let root = dir.join(flamingo_runtime::verify::CACHE_DIR).join("ort");
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An entry whose file changed is rebuilt, not loaded; an export replaced
/// by another model's gets new entries (the old ones removed) and gives
/// that model's logits; an unverified load (`--no-verify`) never uses the
/// cache.
#[test]
fn a_changed_export_or_cache_is_never_served_stale() -> Result<()> {
    let (fx, other) = ("tiny-mpt", "tiny-llama");
    let dir = private_export(fx, "stale")?;
    let want = case_logits(&mut load(&dir, BackendKind::OrtCpu, true)?, fx)?;
    drop(load(&dir, BackendKind::OrtCpu, false)?);
    let before = entries(&dir);
    assert_eq!(before.len(), 4, "{before:?}");
    // a cached weight file overwritten in place, same size
    let decoder = before
        .iter()
        .find(|e| e.starts_with("decoder-"))
        .expect("a decoder entry");
    let data = dir
        .join(flamingo_runtime::verify::CACHE_DIR)
        .join("ort")
        .join(decoder)
        .join("graph.onnx.data");
    let mut bytes = std::fs::read(&data)?;
    for b in bytes.iter_mut().take(4096) {
        *b = !*b;
    }
    std::fs::write(&data, &bytes)?;
    let mut m = load(&dir, BackendKind::OrtCpu, false)?;
    let uses = cache_uses(&m);
    assert!(
        uses.iter().all(|(role, u)| u
            == if *role == GraphRole::Decoder {
                "built"
            } else {
                "hit"
            }),
        "{uses:?}"
    );
    assert_same(&want, &case_logits(&mut m, fx)?, "rebuilt decoder");
    drop(m);
    assert_eq!(entries(&dir), before);

    // another model's export in the same directory
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name() != flamingo_runtime::verify::CACHE_DIR {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
        }
    }
    copy_dir(&exported(other)?, &dir)?;
    let want_other = case_logits(&mut load(&dir, BackendKind::OrtCpu, true)?, other)?;
    let mut m = load(&dir, BackendKind::OrtCpu, false)?;
    assert!(all(&m, "built"), "{:?}", cache_uses(&m));
    assert_same(&want_other, &case_logits(&mut m, other)?, "replaced export");
    drop(m);
    let after = entries(&dir);
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(
        after.iter().all(|e| !before.contains(e)),
        "{before:?} {after:?}"
    );

    let unverified = Model::load_opts(
        &dir,
        BackendKind::OrtCpu,
        &LoadOptions {
            no_verify: true,
            ..Default::default()
        },
    )?;
    assert!(all(&unverified, "off"), "{:?}", cache_uses(&unverified));
    assert_eq!(unverified.load_times.verified_by, "skipped");
    Ok(())
}

/// A file hashed at one load is not hashed at the next while it is
/// unchanged; rewritten with the same size and its modification time put
/// back, it is hashed again and refused.
#[test]
fn a_file_changed_after_it_was_hashed_is_hashed_again() -> Result<()> {
    let fx = "tiny-neox";
    let dir = private_export(fx, "stamps")?;
    // files changed within the last second are not stamped (a change
    // within the clock's tick could keep the ctime)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let first = load(&dir, BackendKind::Tract, true)?;
    assert_eq!(first.load_times.verified_by, "sha256");
    let second = load(&dir, BackendKind::Tract, true)?;
    assert_eq!(second.load_times.verified_by, "stamp");
    let m = flamingo_contract::Manifest::load(&dir)?;
    let data = m
        .graph(GraphRole::VisionEncoder)?
        .data_file
        .clone()
        .expect("external data");
    let p = dir.join(&data);
    let mtime = std::fs::metadata(&p)?.modified()?;
    let mut bytes = std::fs::read(&p)?;
    bytes[0] ^= 1;
    std::fs::write(&p, &bytes)?;
    std::fs::File::options()
        .write(true)
        .open(&p)?
        .set_modified(mtime)?;
    assert_eq!(std::fs::metadata(&p)?.modified()?, mtime);
    let err = match load(&dir, BackendKind::Tract, true) {
        Ok(_) => panic!("a changed {data} was loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("corrupted or changed since export"), "{err}");
    assert!(err.contains(&data), "{err}");
    Ok(())
}
