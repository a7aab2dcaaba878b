//! The language model's `config.json`: family and sizes.

use std::path::Path;

use serde_json::Value;

use crate::error::{io_err, Error, Result};

/// LM families this exporter supports (`model_type` in `config.json`).
pub const SUPPORTED_FAMILIES: &[&str] = &["mpt", "gpt_neox", "llama"];

#[derive(Clone, Debug)]
pub struct LmConfig {
    pub model_type: String,
    pub raw: Value,
    pub path: String,
}

impl LmConfig {
    /// Reads `dir/config.json` and checks that the family is supported.
    pub fn load(dir: &Path) -> Result<LmConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Config {
                path: path.display().to_string(),
                message: "no `model_type`".into(),
            })?
            .to_string();
        if !SUPPORTED_FAMILIES.contains(&model_type.as_str()) {
            return Err(Error::UnsupportedFamily {
                got: model_type,
                supported: SUPPORTED_FAMILIES.to_vec(),
            });
        }
        Ok(LmConfig {
            model_type,
            raw,
            path: path.display().to_string(),
        })
    }

    /// The first of `keys` present as an unsigned integer.
    pub fn usize_of(&self, keys: &[&str]) -> Option<usize> {
        keys.iter()
            .find_map(|k| self.raw.get(*k).and_then(|v| v.as_u64()))
            .map(|v| v as usize)
    }

    pub fn require(&self, keys: &[&str]) -> Result<usize> {
        self.usize_of(keys).ok_or_else(|| Error::Config {
            path: self.path.clone(),
            message: format!("missing `{}`", keys.join("` / `")),
        })
    }

    pub fn vocab_size(&self) -> Result<usize> {
        self.require(&["vocab_size"])
    }
    pub fn hidden_size(&self) -> Result<usize> {
        self.require(&["hidden_size", "d_model", "n_embd"])
    }
    pub fn num_layers(&self) -> Result<usize> {
        self.require(&["num_hidden_layers", "n_layers", "n_layer"])
    }
    pub fn max_positions(&self) -> Option<usize> {
        self.usize_of(&["max_position_embeddings", "max_seq_len", "n_positions"])
    }
}

/// The LM's weight files in `dir`: `model.safetensors`, else every
/// `*.safetensors` (shards), else `pytorch_model*.bin`.
pub fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut st = Vec::new();
    let mut bins = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors") {
            st.push(p);
        } else if name.starts_with("pytorch_model") && name.ends_with(".bin") {
            bins.push(p);
        }
    }
    let mut files = if st.is_empty() { bins } else { st };
    files.sort();
    if files.is_empty() {
        return Err(Error::Config {
            path: dir.display().to_string(),
            message: "no LM weights (model.safetensors, *.safetensors or pytorch_model*.bin)"
                .into(),
        });
    }
    Ok(files)
}
