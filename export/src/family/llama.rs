//! LLaMA as transformers 4.36 implements it (`model_type: "llama"`):
//! RMSNorm, separate q/k/v/o projections, grouped-query attention,
//! rotate-half RoPE over the whole head, SwiGLU MLP, an untied `lm_head`.

use flamingo_graphs::blocks::decoder::{
    DecoderConfig, LayerNames, MlpKind, NormKind, PositionKind, QkvLayout, Residual,
};
use serde::Deserialize;

use super::{Context, Family, FamilyConfig};
use crate::error::Result;

pub const FAMILY: Family = Family {
    model_type: "llama",
    layers: "model.layers",
    embed: "model.embed_tokens.weight",
    layer_probe: "input_layernorm.weight",
    parse: |v| Ok(Box::new(serde_json::from_value::<LlamaConfig>(v)?)),
};

/// `config.json` of a LLaMA model (transformers' `LlamaConfig`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; `None`: as many as the query heads.
    pub num_key_value_heads: Option<usize>,
    pub num_hidden_layers: usize,
    pub intermediate_size: Option<usize>,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub attention_bias: bool,
    pub max_position_embeddings: Option<usize>,
    pub vocab_size: usize,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig {
            hidden_size: 4096,
            num_attention_heads: 32,
            num_key_value_heads: None,
            num_hidden_layers: 32,
            intermediate_size: None,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            attention_bias: false,
            max_position_embeddings: Some(2048),
            vocab_size: 32000,
        }
    }
}

impl FamilyConfig for LlamaConfig {
    fn family(&self) -> &'static Family {
        &FAMILY
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn heads(&self) -> (usize, usize) {
        let h = self.num_attention_heads;
        (h, self.num_key_value_heads.unwrap_or(h))
    }
    fn num_layers(&self) -> usize {
        self.num_hidden_layers
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn max_positions(&self) -> Option<usize> {
        self.max_position_embeddings
    }
    fn decoder(&self, cx: &Context) -> Result<DecoderConfig> {
        let d = self.hidden_size;
        let (heads, kv_heads) = self.heads();
        let head_dim = d / heads;
        let bias = self.attention_bias;
        let up = "mlp.up_proj";
        let intermediate = cx.require(self.intermediate_size, "intermediate_size")?;
        Ok(DecoderConfig {
            layers_path: cx.name(FAMILY.layers),
            embed: cx.name(FAMILY.embed),
            final_norm: cx.name("model.norm"),
            lm_head: cx.first_present(&["lm_head.weight", "model.embed_tokens.weight"]),
            names: LayerNames {
                ln1: "input_layernorm".into(),
                ln2: "post_attention_layernorm".into(),
                qkv: QkvLayout::Separate {
                    q: "self_attn.q_proj".into(),
                    k: "self_attn.k_proj".into(),
                    v: "self_attn.v_proj".into(),
                    bias,
                },
                out: "self_attn.o_proj".into(),
                out_bias: bias,
                mlp: MlpKind::SwiGlu {
                    gate: "mlp.gate_proj".into(),
                    up: up.into(),
                    down: "mlp.down_proj".into(),
                },
            },
            hidden: d,
            heads,
            kv_heads,
            head_dim,
            intermediate: cx.layer_rows(up, intermediate, true)?,
            num_layers: self.num_hidden_layers,
            vocab: cx.vocab,
            eps: self.rms_norm_eps,
            norm: NormKind::RmsNorm,
            position: PositionKind::Rotary {
                dims: head_dim,
                base: self.rope_theta as f32,
            },
            residual: Residual::Sequential,
            xattn: cx.xattn.clone(),
            ..Default::default()
        })
    }
}
