//! MPT as transformers 4.36 implements it (`model_type: "mpt"`): fused
//! `Wqkv` (rows q, k, v), ALiBi, LayerNorm without bias when `no_bias`,
//! `up_proj` -> exact GELU -> `down_proj`, the head tied to `wte`.

use flamingo_graphs::blocks::decoder::{
    DecoderConfig, LayerNames, MlpKind, NormKind, PositionKind, QkvLayout, Residual,
};
use serde::Deserialize;

use super::{Context, Family, FamilyConfig};
use crate::error::Result;

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
}

/// MPT's `attn_config`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct AttnConfig {
    pub alibi_bias_max: f32,
}

impl Default for AttnConfig {
    fn default() -> Self {
        AttnConfig {
            alibi_bias_max: 8.0,
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
            },
            residual: Residual::Sequential,
            xattn: cx.xattn.clone(),
        })
    }
}
