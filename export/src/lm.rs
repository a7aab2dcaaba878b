//! The language model's `config.json`, read into its family's typed config,
//! and the LM's weight files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{io_err, Error, Result};
use crate::family::{self, FamilyConfig};

/// An LM's configuration: its family's typed config plus the token ids
/// every family's config may carry.
#[derive(Debug)]
pub struct LmConfig {
    pub model_type: String,
    pub config: Box<dyn FamilyConfig>,
    pub tokens: TokenIds,
    /// The config file (named in errors).
    pub path: String,
}

/// Token ids of `config.json` (any family). Values that are not a single
/// id (a list, null) are ignored, as transformers' tokenizer-side ids win.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TokenIds {
    #[serde(deserialize_with = "lenient_id")]
    pub pad_token_id: Option<u32>,
    #[serde(deserialize_with = "lenient_id")]
    pub eos_token_id: Option<u32>,
    #[serde(deserialize_with = "lenient_id")]
    pub bos_token_id: Option<u32>,
}

fn lenient_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64().and_then(|x| u32::try_from(x).ok()))
}

impl LmConfig {
    /// Reads `dir/config.json`; its `model_type` picks the family.
    pub fn load(dir: &Path) -> Result<LmConfig> {
        let path = dir.join("config.json");
        let text = crate::files::read_text(&path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json` (named `path` in errors).
    pub fn parse(text: &str, path: &str) -> Result<LmConfig> {
        let bad = |message: String| Error::Config {
            path: path.to_string(),
            message,
        };
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no `model_type`".into()))?
            .to_string();
        let fam = family::family(&model_type)?;
        let tokens: TokenIds =
            serde_json::from_value(raw.clone()).map_err(|e| bad(format!("token ids: {e}")))?;
        let config =
            (fam.parse)(raw).map_err(|e| bad(format!("not a {model_type} config: {e}")))?;
        Ok(LmConfig {
            model_type,
            config,
            tokens,
            path: path.to_string(),
        })
    }

    /// A config built in code (presets).
    pub fn from_config(config: Box<dyn FamilyConfig>) -> LmConfig {
        LmConfig {
            model_type: config.family().model_type.to_string(),
            config,
            tokens: TokenIds::default(),
            path: "preset".into(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }
    pub fn num_layers(&self) -> usize {
        self.config.num_layers()
    }
    pub fn max_positions(&self) -> Option<usize> {
        self.config.max_positions()
    }
}

/// The LM's weight files, as Hugging Face writes them.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightFiles {
    /// The files to read, in order.
    pub files: Vec<PathBuf>,
    /// A shard index (`*.index.json`) and what it says each file holds.
    pub index: Option<(PathBuf, BTreeMap<PathBuf, Vec<String>>)>,
}

/// The LM's weight files in `dir`: `model.safetensors`, else
/// `model.safetensors.index.json` and its shards, else `pytorch_model.bin`,
/// else `pytorch_model.bin.index.json` and its shards, else every
/// `*.safetensors`, else every `pytorch_model*.bin`.
pub fn weight_files(dir: &Path) -> Result<WeightFiles> {
    for single in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(single);
        if p.is_file() {
            return Ok(WeightFiles {
                files: vec![p],
                index: None,
            });
        }
        let index = dir.join(format!("{single}.index.json"));
        if index.is_file() {
            return read_index(dir, &index);
        }
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
            message: "no LM weights (model.safetensors, pytorch_model.bin, their .index.json shards, *.safetensors or pytorch_model*.bin)"
                .into(),
        });
    }
    Ok(WeightFiles { files, index: None })
}

/// A shard index: `{"weight_map": {tensor: file}}`, every file beside it.
fn read_index(dir: &Path, index: &Path) -> Result<WeightFiles> {
    let text = crate::files::read_text(index)?;
    let by_file = parse_index(&text, dir, index)?;
    for f in by_file.keys() {
        if !f.is_file() {
            return Err(Error::Config {
                path: index.display().to_string(),
                message: format!("names {}, which does not exist", f.display()),
            });
        }
    }
    Ok(WeightFiles {
        files: by_file.keys().cloned().collect(),
        index: Some((index.to_path_buf(), by_file)),
    })
}

/// The shard index `text` (at `index`, in `dir`): each shard file and the
/// tensors it holds; a file that is not a plain name beside the index is an
/// error.
pub fn parse_index(text: &str, dir: &Path, index: &Path) -> Result<BTreeMap<PathBuf, Vec<String>>> {
    let bad = |message: String| Error::Config {
        path: index.display().to_string(),
        message,
    };
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let idx: Index =
        serde_json::from_str(text).map_err(|e| bad(format!("not a shard index: {e}")))?;
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (tensor, file) in idx.weight_map {
        let p = Path::new(&file);
        let plain = p.components().count() == 1
            && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
        if !plain {
            return Err(bad(format!(
                "`{tensor}` is in `{file}`, which is not a file beside the index"
            )));
        }
        by_file.entry(dir.join(p)).or_default().push(tensor);
    }
    if by_file.is_empty() {
        return Err(bad("the `weight_map` is empty".into()));
    }
    Ok(by_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_reads_its_config_with_defaults_and_aliases() {
        let lm = LmConfig::parse(
            r#"{"model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 2,
                "attn_config": {"model_type": ""}, "pad_token_id": [1, 2]}"#,
            "config.json",
        )
        .unwrap();
        assert_eq!(lm.hidden_size(), 64);
        assert_eq!(lm.config.heads(), (4, 4));
        assert_eq!(lm.max_positions(), Some(2048), "MptConfig's default");
        assert_eq!(lm.tokens.pad_token_id, None, "a list is no single id");
        let lm = LmConfig::parse(
            r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                "num_hidden_layers": 2, "eos_token_id": 2}"#,
            "config.json",
        )
        .unwrap();
        assert_eq!(lm.config.heads(), (4, 4), "kv heads default to the heads");
        assert_eq!(lm.tokens.eos_token_id, Some(2));
        let err = LmConfig::parse(
            r#"{"model_type": "gpt_neox", "num_hidden_layers": "four"}"#,
            "lm/config.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lm/config.json") && err.contains("invalid type"),
            "{err}"
        );
        let err = LmConfig::parse(r#"{"model_type": "opt"}"#, "c.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mpt, mosaic_gpt, gpt_neox, llama"), "{err}");
    }
}
