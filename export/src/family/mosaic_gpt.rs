//! MosaicGPT (`model_type: "mosaic_gpt"`, mosaicml/examples v0.0.4
//! `mosaic_gpt.py`, `layers/attention.py`, `layers/gpt_blocks.py`): the
//! MPT-1B of OpenFlamingo-3B. Fused `Wqkv` (rows q, k, v), optionally
//! clamped (`attn_clip_qkv`); LayerNorm over the full-width q and k before
//! the heads are split (`attn_qk_ln`); ALiBi with slopes `1/2^(h·max/H)`
//! (no power-of-two interleaving); `no_bias` removes every bias, the
//! LayerNorms' included; `mlp_up` -> exact GELU -> `mlp_down`; logits
//! `x · wteᵀ`, times `logit_scale` when set.

use flamingo_graphs::blocks::decoder::{
    AlibiSlopes, AttnOptions, DecoderConfig, LayerNames, MlpKind, NormKind, PositionKind,
    QkvLayout, Residual,
};
use serde::Deserialize;

use super::{Context, Family, FamilyConfig};
use crate::error::{Error, Result};

pub const FAMILY: Family = Family {
    model_type: "mosaic_gpt",
    layers: "transformer.blocks",
    embed: "transformer.wte.weight",
    layer_probe: "ln_1.weight",
    parse: |v| {
        let c = serde_json::from_value::<MosaicGptConfig>(v)?;
        Ok(Box::new(c))
    },
};

/// `logit_scale`: a number, or `inv_sqrt_d_model`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LogitScale {
    Value(f64),
    Named(String),
}

impl LogitScale {
    /// The factor, for a model of width `d_model` (`path`: the config, for errors).
    pub fn value(&self, d_model: usize, path: &str) -> Result<f32> {
        match self {
            LogitScale::Value(v) => Ok(*v as f32),
            LogitScale::Named(n) if n == "inv_sqrt_d_model" => {
                Ok((1.0 / (d_model as f64).sqrt()) as f32)
            }
            LogitScale::Named(n) => Err(Error::Config {
                path: path.to_string(),
                message: format!("`logit_scale` `{n}` is not a number or `inv_sqrt_d_model`"),
            }),
        }
    }
}

/// `config.json` of a MosaicGPT model (`MosaicGPTConfig`, its defaults).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct MosaicGptConfig {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub mlp_ratio: usize,
    pub max_seq_len: usize,
    pub vocab_size: usize,
    pub attn_qk_ln: bool,
    pub attn_clip_qkv: Option<f32>,
    pub softmax_scale: Option<f32>,
    pub prefix_lm: Option<bool>,
    pub alibi: bool,
    pub alibi_bias_max: f32,
    pub logit_scale: Option<LogitScale>,
    pub no_bias: bool,
}

impl Default for MosaicGptConfig {
    fn default() -> Self {
        MosaicGptConfig {
            d_model: 2048,
            n_heads: 16,
            n_layers: 24,
            mlp_ratio: 4,
            max_seq_len: 2048,
            vocab_size: 50368,
            attn_qk_ln: false,
            attn_clip_qkv: None,
            softmax_scale: None,
            prefix_lm: Some(false),
            alibi: false,
            alibi_bias_max: 8.0,
            logit_scale: None,
            no_bias: false,
        }
    }
}

impl MosaicGptConfig {
    /// OpenFlamingo-3B's LM (anas-awadalla/mpt-1b-redpajama-200b).
    pub fn mpt_1b_redpajama() -> MosaicGptConfig {
        MosaicGptConfig {
            d_model: 2048,
            n_heads: 16,
            n_layers: 24,
            mlp_ratio: 4,
            max_seq_len: 2048,
            vocab_size: 50432,
            attn_qk_ln: true,
            alibi: true,
            no_bias: true,
            ..Default::default()
        }
    }

    fn logit_scale(&self, path: &str) -> Result<Option<f32>> {
        self.logit_scale
            .as_ref()
            .map(|l| l.value(self.d_model, path))
            .transpose()
    }
}

impl FamilyConfig for MosaicGptConfig {
    fn family(&self) -> &'static Family {
        &FAMILY
    }
    fn hidden_size(&self) -> usize {
        self.d_model
    }
    fn heads(&self) -> (usize, usize) {
        (self.n_heads, self.n_heads)
    }
    fn num_layers(&self) -> usize {
        self.n_layers
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn max_positions(&self) -> Option<usize> {
        Some(self.max_seq_len)
    }
    fn decoder(&self, cx: &Context) -> Result<DecoderConfig> {
        let unsupported = |option: &str, what: &str| Error::Config {
            path: cx.path().to_string(),
            message: format!("`{option}`: {what} is not implemented by the exported graphs"),
        };
        if self.prefix_lm == Some(true) {
            return Err(unsupported(
                "prefix_lm",
                "a prefix LM (bidirectional prompt attention)",
            ));
        }
        if !self.alibi {
            return Err(unsupported(
                "alibi",
                "false (learned position embeddings `transformer.wpe`)",
            ));
        }
        let bias = !self.no_bias;
        let d = self.d_model;
        let up = "mlp.mlp_up";
        Ok(DecoderConfig {
            layers_path: cx.name(FAMILY.layers),
            embed: cx.name(FAMILY.embed),
            final_norm: cx.name("transformer.ln_f"),
            // the head is tied to the input embedding
            lm_head: cx.name(FAMILY.embed),
            names: LayerNames {
                ln1: "ln_1".into(),
                ln2: "ln_2".into(),
                qkv: QkvLayout::Fused {
                    name: "attn.Wqkv".into(),
                    bias,
                },
                out: "attn.out_proj".into(),
                out_bias: bias,
                mlp: MlpKind::Gelu {
                    up: up.into(),
                    down: "mlp.mlp_down".into(),
                    bias,
                },
            },
            hidden: d,
            heads: self.n_heads,
            kv_heads: self.n_heads,
            head_dim: d / self.n_heads,
            intermediate: cx.layer_rows(up, self.mlp_ratio * d, true)?,
            num_layers: self.n_layers,
            vocab: cx.vocab,
            eps: 1e-5,
            norm: NormKind::LayerNorm { bias },
            position: PositionKind::Alibi {
                bias_max: self.alibi_bias_max,
                slopes: AlibiSlopes::Linear,
            },
            residual: Residual::Sequential,
            xattn: cx.xattn.clone(),
            attn: AttnOptions {
                qk_norm: self
                    .attn_qk_ln
                    .then(|| ("attn.q_ln".into(), "attn.k_ln".into())),
                clip_qkv: self.attn_clip_qkv,
                softmax_scale: self.softmax_scale,
            },
            logit_scale: self.logit_scale(cx.path())?,
        })
    }
}
