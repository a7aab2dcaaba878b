//! MPT as transformers 4.36 implements it (`model_type: "mpt"`), and as
//! mosaicml ships it with its own code (MPT-7B, OpenFlamingo-9B's LM): fused
//! `Wqkv` (rows q, k, v), ALiBi (slopes interleaved for head counts that are
//! not a power of two), LayerNorm without bias when `no_bias`, `up_proj` ->
//! exact GELU -> `down_proj`, the head tied to `wte`. mosaicml's
//! `attn_config` options `qk_ln` (`attn.q_ln`/`attn.k_ln`), `clip_qkv`,
//! `softmax_scale` and `logit_scale` are read; options the graphs do not
//! implement (`prefix_lm`, learned positions without ALiBi, other norms) are
//! an error naming the option.

use flamingo_graphs::blocks::decoder::{
    AlibiSlopes, AttnOptions, DecoderConfig, LayerNames, MlpKind, NormKind, PositionKind,
    QkvLayout, Residual,
};
use serde::Deserialize;

use super::{Context, Family, FamilyConfig};
use crate::error::{Error, Result};

pub const FAMILY: Family = Family {
    model_type: "mpt",
    layers: "transformer.blocks",
    embed: "transformer.wte.weight",
    layer_probe: "norm_1.weight",
    parse: |v| Ok(Box::new(serde_json::from_value::<MptConfig>(v)?)),
};

/// `config.json` of an MPT model (transformers' `MptConfig`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct MptConfig {
    #[serde(alias = "hidden_size", alias = "n_embd")]
    pub d_model: usize,
    pub n_heads: usize,
    #[serde(alias = "num_hidden_layers", alias = "n_layer")]
    pub n_layers: usize,
    /// The MLP's width over `d_model` (transformers' MPT MLP is 4x wide
    /// whatever this says: the width is read from `up_proj` when there are
    /// weights).
    pub expansion_ratio: usize,
    #[serde(alias = "max_position_embeddings", alias = "n_positions")]
    pub max_seq_len: Option<usize>,
    pub vocab_size: usize,
    pub no_bias: bool,
    pub layer_norm_epsilon: f32,
    pub attn_config: AttnConfig,
    /// `low_precision_layernorm` or `layernorm` (the same in float32).
    pub norm_type: String,
    /// Logits multiplied by this (mosaicml's code; a number or `inv_sqrt_d_model`).
    pub logit_scale: Option<super::mosaic_gpt::LogitScale>,
}

/// MPT's `attn_config`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct AttnConfig {
    pub alibi: bool,
    pub alibi_bias_max: f32,
    pub qk_ln: bool,
    pub clip_qkv: Option<f32>,
    pub softmax_scale: Option<f32>,
    pub prefix_lm: Option<bool>,
}

impl Default for AttnConfig {
    fn default() -> Self {
        AttnConfig {
            alibi: true,
            alibi_bias_max: 8.0,
            qk_ln: false,
            clip_qkv: None,
            softmax_scale: None,
            prefix_lm: Some(false),
        }
    }
}

impl Default for MptConfig {
    fn default() -> Self {
        MptConfig {
            d_model: 2048,
            n_heads: 16,
            n_layers: 24,
            expansion_ratio: 4,
            max_seq_len: Some(2048),
            vocab_size: 50368,
            no_bias: true,
            layer_norm_epsilon: 1e-5,
            attn_config: AttnConfig::default(),
            norm_type: "low_precision_layernorm".into(),
            logit_scale: None,
        }
    }
}

impl MptConfig {
    /// OpenFlamingo-9B's LM (anas-awadalla/mpt-7b, as MPT-7B's config.json).
    pub fn mpt_7b() -> MptConfig {
        MptConfig {
            d_model: 4096,
            n_heads: 32,
            n_layers: 32,
            expansion_ratio: 4,
            max_seq_len: Some(2048),
            vocab_size: 50432,
            ..Default::default()
        }
    }
}

impl FamilyConfig for MptConfig {
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
        self.max_seq_len
    }
    fn decoder(&self, cx: &Context) -> Result<DecoderConfig> {
        let unsupported = |option: &str, what: String| Error::Config {
            path: cx.path().to_string(),
            message: format!("`{option}`: {what} is not implemented by the exported graphs"),
        };
        let a = &self.attn_config;
        if a.prefix_lm == Some(true) {
            return Err(unsupported(
                "attn_config.prefix_lm",
                "a prefix LM (bidirectional prompt attention)".into(),
            ));
        }
        if !a.alibi {
            return Err(unsupported(
                "attn_config.alibi",
                "false (learned position embeddings `transformer.wpe`)".into(),
            ));
        }
        if !["low_precision_layernorm", "layernorm"].contains(&self.norm_type.as_str()) {
            return Err(unsupported("norm_type", format!("`{}`", self.norm_type)));
        }
        let logit_scale = self
            .logit_scale
            .as_ref()
            .map(|l| l.value(self.d_model, cx.path()))
            .transpose()?;
        let bias = !self.no_bias;
        let d = self.d_model;
        let up = "ffn.up_proj";
        Ok(DecoderConfig {
            layers_path: cx.name(FAMILY.layers),
            embed: cx.name(FAMILY.embed),
            final_norm: cx.name("transformer.norm_f"),
            lm_head: cx.first_present(&["lm_head.weight", "transformer.wte.weight"]),
            names: LayerNames {
                ln1: "norm_1".into(),
                ln2: "norm_2".into(),
                qkv: QkvLayout::Fused {
                    name: "attn.Wqkv".into(),
                    bias,
                },
                out: "attn.out_proj".into(),
                out_bias: bias,
                mlp: MlpKind::Gelu {
                    up: up.into(),
                    down: "ffn.down_proj".into(),
                    bias,
                },
            },
            hidden: d,
            heads: self.n_heads,
            kv_heads: self.n_heads,
            head_dim: d / self.n_heads,
            // shapes trump config: the width of `up_proj`
            intermediate: cx.layer_rows(up, self.expansion_ratio * d, false)?,
            num_layers: self.n_layers,
            vocab: cx.vocab,
            eps: self.layer_norm_epsilon,
            norm: NormKind::LayerNorm { bias },
            position: PositionKind::Alibi {
                bias_max: self.attn_config.alibi_bias_max,
                slopes: AlibiSlopes::Interleaved,
            },
            residual: Residual::Sequential,
            xattn: cx.xattn.clone(),
            attn: AttnOptions {
                qk_norm: a.qk_ln.then(|| ("attn.q_ln".into(), "attn.k_ln".into())),
                clip_qkv: a.clip_qkv,
                softmax_scale: a.softmax_scale,
            },
            logit_scale,
        })
    }
}
