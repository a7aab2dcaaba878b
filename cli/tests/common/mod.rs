//! What the binary's integration tests share: the fixtures, running the
//! binary, exporting a fixture with it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub fn flamingo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .args(args)
        .output()
        .expect("running the flamingo binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn export(fx: &str, out: &Path) {
    let f = fixture(fx);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("flamingo.json")).unwrap()).unwrap();
    let p = |s: &str| f.join(s).display().to_string();
    if let Some(files) = cfg.get("files") {
        // as the release ships: the LM repo's tokenizer, the interval from
        // checkpoint.pt, the CLIP directory for its TorchScript file
        let (ok, _, err) = flamingo(&[
            "export",
            "--clip",
            &p("clip"),
            "--lm",
            &p(files["lm"].as_str().unwrap()),
            "--checkpoint",
            &p(files["checkpoint"].as_str().unwrap()),
            "--out",
            &out.display().to_string(),
        ]);
        assert!(ok, "export {fx} failed: {err}");
        return;
    }
    let n = cfg["cross_attn_every_n_layers"].to_string();
    let (ok, _, err) = flamingo(&[
        "export",
        "--clip",
        &p("clip/open_clip_pytorch_model.bin"),
        "--lm",
        &p("lm"),
        "--checkpoint",
        &p("checkpoint.pt"),
        "--tokenizer",
        &p("tokenizer"),
        "--cross-attn-every-n-layers",
        &n,
        "--out",
        &out.display().to_string(),
    ]);
    assert!(ok, "export {fx} failed: {err}");
}
