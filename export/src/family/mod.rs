//! LM families, one file each: a `#[derive(Deserialize)]` config that
//! mirrors the family's `config.json` (defaults as serde defaults, aliases
//! declared there) and one function from it to the decoder spec
//! ([`FamilyConfig::decoder`]). [`FAMILIES`] is the registry; a new family is
//! a new file and one line there.
//!
//! The mapping is the same for a release and for a preset: with a
//! checkpoint, sizes are read from its tensors and checked against the
//! config (a disagreement names the tensor and both shapes); a preset has
//! none, so its config is the whole truth. All tensor names are under
//! `lang_encoder.` (the LM's own names, as OpenFlamingo nests them;
//! `checkpoint.pt` overrides the embeddings).

pub mod gpt_neox;
pub mod llama;
pub mod mosaic_gpt;
pub mod mpt;

use std::fmt::Debug;

use flamingo_graphs::blocks::decoder::{DecoderConfig, XAttnConfig};
use flamingo_graphs::blocks::ResamplerConfig;

use crate::config::count_layers;
use crate::error::{Error, Result};
use crate::store::TensorStore;

/// What every family declares besides its config type.
pub struct Family {
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// Where the decoder layers live (`transformer.blocks`).
    pub layers: &'static str,
    /// The input embedding `[V, D]`.
    pub embed: &'static str,
    /// A tensor every decoder layer has, relative to the layer (counts them).
    pub layer_probe: &'static str,
    /// Reads `config.json` into the family's typed config.
    pub parse: fn(serde_json::Value) -> serde_json::Result<Box<dyn FamilyConfig>>,
}

/// The supported families (`model_type` in `config.json`).
pub const FAMILIES: &[&Family] = &[
    &mpt::FAMILY,
    &mosaic_gpt::FAMILY,
    &gpt_neox::FAMILY,
    &llama::FAMILY,
];

/// The `model_type`s of [`FAMILIES`].
pub fn supported() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.model_type).collect()
}

/// The family of `model_type`.
pub fn family(model_type: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_type == model_type)
        .ok_or_else(|| Error::UnsupportedFamily {
            got: model_type.to_string(),
            supported: supported(),
        })
}

/// A family's typed `config.json`.
pub trait FamilyConfig: Debug + Send + Sync {
    fn family(&self) -> &'static Family;
    fn hidden_size(&self) -> usize;
    /// Query heads and key/value heads.
    fn heads(&self) -> (usize, usize);
    fn num_layers(&self) -> usize;
    /// The config's vocabulary (often padded beyond the tokenizer's).
    fn vocab_size(&self) -> usize;
    fn max_positions(&self) -> Option<usize>;
    /// The decoder spec.
    fn decoder(&self, cx: &Context) -> Result<DecoderConfig>;
}

/// Prefix of the LM's tensors in the release's store.
pub const P: &str = "lang_encoder.";

/// What a family's mapping reads besides its config.
pub struct Context<'a> {
    /// The checkpoint's tensors (none for a preset).
    tensors: Option<&'a TensorStore>,
    /// The config file, for errors.
    path: &'a str,
    layers_path: String,
    /// Rows of the input embedding: the checkpoint's (resized to the
    /// tokenizer), else the config's.
    pub vocab: usize,
    pub xattn: XAttnConfig,
}

impl Context<'_> {
    /// The config file (for errors).
    pub fn path(&self) -> &str {
        self.path
    }

    /// `lang_encoder.<rel>`.
    pub fn name(&self, rel: &str) -> String {
        format!("{P}{rel}")
    }

    /// The first of `candidates` the checkpoint has; the first without a
    /// checkpoint or when none is there (missing tensors are named later).
    pub fn first_present(&self, candidates: &[&str]) -> String {
        candidates
            .iter()
            .map(|n| self.name(n))
            .find(|n| self.tensors.is_some_and(|t| t.get_entry(n).is_some()))
            .unwrap_or_else(|| self.name(candidates[0]))
    }

    /// A size the config must give.
    pub fn require(&self, v: Option<usize>, key: &str) -> Result<usize> {
        v.ok_or_else(|| Error::Config {
            path: self.path.to_string(),
            message: format!("missing `{key}`"),
        })
    }

    /// Rows of the first layer's `<rel>.weight`: the checkpoint's (checked
    /// to equal `configured` when `check`), else `configured`.
    pub fn layer_rows(&self, rel: &str, configured: usize, check: bool) -> Result<usize> {
        let Some(t) = self.tensors else {
            return Ok(configured);
        };
        let name = format!("{}.0.{rel}.weight", self.layers_path);
        let got = shape(t, &name)?;
        let rows = got[0];
        if check && rows != configured {
            let hidden = got.get(1).copied().unwrap_or(0);
            return Err(mismatch(&name, vec![configured, hidden], got));
        }
        Ok(rows)
    }
}

fn shape(store: &TensorStore, name: &str) -> Result<Vec<usize>> {
    store
        .shape(name)
        .map(|s| s.to_vec())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::Graph(flamingo_graphs::Error::MissingTensor {
                name: name.to_string(),
                file: None,
            })
        })
}

fn mismatch(name: &str, expected: Vec<usize>, got: Vec<usize>) -> Error {
    Error::Graph(flamingo_graphs::Error::ShapeMismatch {
        name: name.to_string(),
        expected,
        got,
    })
}

/// OpenFlamingo's gated cross-attention as the releases build it
/// (`dim_head` 64, 8 heads, 4x feed-forward), over `dim_visual` latents.
pub fn openflamingo_xattn(every_n: usize, dim_visual: usize, num_latents: usize) -> XAttnConfig {
    XAttnConfig {
        every_n,
        heads: 8,
        dim_head: 64,
        ff_mult: 4,
        dim_visual,
        num_latents,
        eps: 1e-5,
    }
}

/// The decoder of `lm`, sizes from the checkpoint's tensors when there is
/// one (`store`), checked against the config, with a gated cross-attention
/// block every `every_n` layers over `resampler`'s latents.
pub fn decoder_config(
    lm: &crate::lm::LmConfig,
    store: Option<&TensorStore>,
    resampler: &ResamplerConfig,
    every_n: usize,
) -> Result<DecoderConfig> {
    let c = lm.config.as_ref();
    let f = c.family();
    let hidden = c.hidden_size();
    let (heads, kv_heads) = c.heads();
    if heads == 0 || hidden % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::Config {
            path: lm.path.clone(),
            message: format!("hidden size {hidden} with {heads} heads and {kv_heads} key/value heads is not a valid layout"),
        });
    }
    if c.max_positions() == Some(0) || c.num_layers() == 0 || c.vocab_size() == 0 {
        return Err(Error::Config {
            path: lm.path.clone(),
            message: format!(
                "{} layers, a vocabulary of {} and a context of {} make no model (each must be at least 1)",
                c.num_layers(),
                c.vocab_size(),
                c.max_positions()
                    .map_or("unlimited positions".to_string(), |n| format!("{n} tokens"))
            ),
        });
    }
    let layers_path = format!("{P}{}", f.layers);
    let num_layers = c.num_layers();
    let mut xattn = openflamingo_xattn(every_n, resampler.dim, resampler.num_latents);
    let vocab = match store {
        None => c.vocab_size(),
        Some(store) => {
            let embed = format!("{P}{}", f.embed);
            let emb = shape(store, &embed)?;
            let vocab = emb[0];
            if emb.len() != 2 || emb[1] != hidden {
                return Err(mismatch(&embed, vec![vocab, hidden], emb));
            }
            let found = count_layers(
                store,
                &format!("{layers_path}."),
                &format!(".{}", f.layer_probe),
            );
            if found != num_layers {
                return Err(Error::Config {
                    path: lm.path.clone(),
                    message: format!(
                        "the config says {num_layers} layers but the weights have {found} (`{layers_path}.{}.{}`)",
                        found.min(num_layers),
                        f.layer_probe
                    ),
                });
            }
            checkpoint_xattn(store, &layers_path, num_layers, hidden, &mut xattn)?;
            vocab
        }
    };
    c.decoder(&Context {
        tensors: store,
        path: &lm.path,
        layers_path,
        vocab,
        xattn,
    })
}

/// `cross_attn_every_n_layers` as the checkpoint says it: the layer
/// indices holding a gated block are those `i` with `(i+1) % n == 0`.
pub fn every_n_from_checkpoint(
    lm: &crate::lm::LmConfig,
    store: &TensorStore,
    checkpoint: &std::path::Path,
) -> Result<usize> {
    let layers_path = format!("{P}{}", lm.config.family().layers);
    let num_layers = lm.config.num_layers();
    let gated: Vec<usize> = (0..num_layers)
        .filter(|i| {
            let name = format!("{layers_path}.{i}.gated_cross_attn_layer.attn_gate");
            store.get_entry(&name).is_some()
        })
        .collect();
    let Some(&first) = gated.first() else {
        return Err(Error::Config {
            path: checkpoint.display().to_string(),
            message: format!(
                "no gated cross-attention layer (`{layers_path}.<i>.gated_cross_attn_layer.*`)"
            ),
        });
    };
    let n = first + 1;
    let want: Vec<usize> = (0..num_layers)
        .filter(|i| (i + 1).is_multiple_of(n))
        .collect();
    if gated != want {
        return Err(Error::Config {
            path: checkpoint.display().to_string(),
            message: format!(
                "the gated cross-attention layers {gated:?} of {num_layers} fit no interval \
                 (every n-th layer, before layer i when (i+1) % n == 0)"
            ),
        });
    }
    Ok(n)
}

/// Checks that the gated blocks sit where `xattn.every_n` puts them and
/// reads their sizes from the first one.
fn checkpoint_xattn(
    store: &TensorStore,
    layers_path: &str,
    num_layers: usize,
    hidden: usize,
    xattn: &mut XAttnConfig,
) -> Result<()> {
    let every_n = xattn.every_n;
    // gated blocks where (i+1) % n != 0 mean the wrong --cross-attn-every-n-layers
    for i in 0..num_layers {
        let name = format!("{layers_path}.{i}.gated_cross_attn_layer.attn_gate");
        let has = store.get_entry(&name).is_some();
        if has != (i + 1).is_multiple_of(every_n) {
            return Err(Error::Config {
                path: "--cross-attn-every-n-layers".into(),
                message: format!(
                    "{every_n} does not match the checkpoint: `{name}` is {}",
                    if has { "present" } else { "missing" }
                ),
            });
        }
    }
    let first = (0..num_layers)
        .find(|i| (i + 1).is_multiple_of(every_n))
        .unwrap_or(0);
    let xq = format!("{layers_path}.{first}.gated_cross_attn_layer.attn.to_q.weight");
    let inner = shape(store, &xq)?[0];
    let ff = format!("{layers_path}.{first}.gated_cross_attn_layer.ff.1.weight");
    let ff_rows = shape(store, &ff)?[0];
    if !inner.is_multiple_of(xattn.dim_head) {
        return Err(mismatch(
            &xq,
            vec![8 * xattn.dim_head, hidden],
            shape(store, &xq)?,
        ));
    }
    xattn.heads = inner / xattn.dim_head;
    xattn.ff_mult = ff_rows / hidden.max(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::LmConfig;
    use flamingo_graphs::blocks::decoder::{AlibiSlopes, PositionKind};

    fn resampler() -> ResamplerConfig {
        ResamplerConfig {
            dim: 64,
            depth: 1,
            heads: 1,
            dim_head: 64,
            num_latents: 64,
            ff_mult: 4,
            eps: 1e-5,
            max_num_frames: None,
            max_num_media: None,
        }
    }

    fn decoder(json: &str) -> Result<DecoderConfig> {
        let lm = LmConfig::parse(json, "lm/config.json")?;
        decoder_config(&lm, None, &resampler(), 1)
    }

    #[test]
    fn mosaicml_mpt_options_map_or_are_named() {
        let d = decoder(
            r#"{"model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 2,
                "attn_config": {"qk_ln": true, "clip_qkv": 6.0, "softmax_scale": 0.1},
                "logit_scale": "inv_sqrt_d_model", "learned_pos_emb": true}"#,
        )
        .unwrap();
        assert_eq!(
            d.attn.qk_norm,
            Some(("attn.q_ln".to_string(), "attn.k_ln".to_string()))
        );
        assert_eq!(
            (d.attn.clip_qkv, d.attn.softmax_scale),
            (Some(6.0), Some(0.1))
        );
        assert_eq!(d.logit_scale, Some(0.125));
        for (cfg, option) in [
            (
                r#""attn_config": {"prefix_lm": true}"#,
                "attn_config.prefix_lm",
            ),
            (r#""attn_config": {"alibi": false}"#, "attn_config.alibi"),
            (r#""norm_type": "rmsnorm""#, "norm_type"),
            (r#""logit_scale": "huge""#, "logit_scale"),
        ] {
            let json = format!(
                r#"{{"model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 2, {cfg}}}"#
            );
            let err = decoder(&json).unwrap_err().to_string();
            assert!(
                err.contains(option) && err.contains("lm/config.json"),
                "{err}"
            );
        }
    }

    #[test]
    fn mosaic_gpt_maps_its_own_names_and_slopes() {
        let d = decoder(
            r#"{"model_type": "mosaic_gpt", "d_model": 64, "n_heads": 4, "n_layers": 3,
                "mlp_ratio": 4, "alibi": true, "alibi_bias_max": 8, "attn_qk_ln": true,
                "no_bias": true, "vocab_size": 416}"#,
        )
        .unwrap();
        assert_eq!(d.names.ln1, "ln_1");
        assert_eq!(d.lm_head, d.embed, "tied");
        assert!(matches!(
            d.position,
            PositionKind::Alibi {
                slopes: AlibiSlopes::Linear,
                ..
            }
        ));
        assert_eq!(d.intermediate, 256);
        assert!(d.attn.qk_norm.is_some());
        let err = decoder(r#"{"model_type": "mosaic_gpt", "alibi": false}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`alibi`"), "{err}");
    }
}
