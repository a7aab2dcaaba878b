//! Where a release's files are: a path as given, or (a Hugging Face hub
//! snapshot directory, a download folder) the weights file inside it.

use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};

/// The CLIP weights: the file, or in a directory open_clip's
/// `open_clip_pytorch_model.bin` / `open_clip_model.safetensors`, OpenAI's
/// `ViT-*.pt`, or its only `.pt` / `.bin` / `.safetensors` file.
pub fn clip_weights(path: &Path) -> Result<PathBuf> {
    in_dir(
        path,
        &["open_clip_pytorch_model.bin", "open_clip_model.safetensors"],
        &[".pt", ".bin", ".safetensors"],
    )
}

/// OpenFlamingo's checkpoint: the file, or `checkpoint.pt` in a directory.
pub fn checkpoint(path: &Path) -> Result<PathBuf> {
    in_dir(path, &["checkpoint.pt"], &[".pt"])
}

fn in_dir(path: &Path, names: &[&str], exts: &[&str]) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    for n in names {
        let p = path.join(n);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file() && exts.iter().any(|e| n.ends_with(e))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Config {
            path: path.display().to_string(),
            message: format!(
                "a directory without {} or any {} file",
                names.join(" or "),
                exts.join(" / ")
            ),
        }),
        _ => Err(Error::Config {
            path: path.display().to_string(),
            message: format!(
                "a directory with several candidate weight files ({}); name one",
                found
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The text of a config, index or tokenizer file (see
/// `flamingo_contract::read_text`).
pub fn read_text(path: &Path) -> Result<String> {
    flamingo_contract::read_text(path, flamingo_contract::MAX_TEXT_BYTES).map_err(|e| match e {
        flamingo_contract::Error::Io { path, source } => Error::Io { path, source },
        flamingo_contract::Error::Invalid { path, message } => Error::Config { path, message },
    })
}

/// Whether `path` is a TorchScript archive (`torch.jit.save`: code beside
/// the data; nothing of it is run here).
pub fn is_torchscript(path: &Path) -> Result<bool> {
    let file = crate::store::Mapped::open(path)?;
    if !file.map.starts_with(b"PK") {
        return Ok(false);
    }
    let archive = crate::zip::Archive::open(path, &file.map)?;
    Ok(archive
        .entries
        .keys()
        .any(|k| k.contains("/code/__torch__/")))
}
