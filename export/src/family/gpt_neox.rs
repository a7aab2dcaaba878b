//! GPT-NeoX as transformers 4.36 implements it (`model_type: "gpt_neox"`,
//! RedPajama-INCITE): fused `query_key_value` laid out per head, rotary on
//! the first `rotary_pct` of each head, parallel or sequential residual,
//! LayerNorm and projections with biases, `embed_out` (maybe tied).

use flamingo_graphs::blocks::decoder::{
    DecoderConfig, LayerNames, MlpKind, NormKind, PositionKind, QkvLayout, Residual,
};
use serde::Deserialize;

use super::{Context, Family, FamilyConfig};
use crate::error::Result;

pub const FAMILY: Family = Family {
    model_type: "gpt_neox",
    layers: "gpt_neox.layers",
    embed: "gpt_neox.embed_in.weight",
    layer_probe: "input_layernorm.weight",
    parse: |v| Ok(Box::new(serde_json::from_value::<GptNeoxConfig>(v)?)),
};

/// `config.json` of a GPT-NeoX model (transformers' `GPTNeoXConfig`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct GptNeoxConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: Option<usize>,
    pub rotary_pct: f64,
    pub rotary_emb_base: f64,
    pub use_parallel_residual: bool,
    pub layer_norm_eps: f32,
    pub max_position_embeddings: Option<usize>,
    pub vocab_size: usize,
}

impl Default for GptNeoxConfig {
    fn default() -> Self {
        GptNeoxConfig {
            hidden_size: 6144,
            num_attention_heads: 64,
            num_hidden_layers: 44,
            intermediate_size: None,
            rotary_pct: 0.25,
            rotary_emb_base: 10000.0,
            use_parallel_residual: true,
            layer_norm_eps: 1e-5,
            max_position_embeddings: Some(2048),
            vocab_size: 50432,
        }
    }
}

impl GptNeoxConfig {
    /// OpenFlamingo-4B's LM (togethercomputer/RedPajama-INCITE-Base-3B-v1).
    pub fn redpajama_3b() -> GptNeoxConfig {
        GptNeoxConfig {
            hidden_size: 2560,
            num_attention_heads: 32,
            num_hidden_layers: 32,
            intermediate_size: Some(10240),
            rotary_pct: 1.0,
            rotary_emb_base: 10000.0,
            use_parallel_residual: false,
            layer_norm_eps: 1e-5,
            max_position_embeddings: Some(2048),
            vocab_size: 50432,
        }
    }
}

impl FamilyConfig for GptNeoxConfig {
    fn family(&self) -> &'static Family {
        &FAMILY
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn heads(&self) -> (usize, usize) {
        (self.num_attention_heads, self.num_attention_heads)
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
        let head_dim = d / self.num_attention_heads;
        let up = "mlp.dense_h_to_4h";
        let intermediate = cx.require(self.intermediate_size, "intermediate_size")?;
        Ok(DecoderConfig {
            layers_path: cx.name(FAMILY.layers),
            embed: cx.name(FAMILY.embed),
            final_norm: cx.name("gpt_neox.final_layer_norm"),
            lm_head: cx.first_present(&["embed_out.weight", "gpt_neox.embed_in.weight"]),
            names: LayerNames {
                ln1: "input_layernorm".into(),
                ln2: "post_attention_layernorm".into(),
                qkv: QkvLayout::FusedPerHead {
                    name: "attention.query_key_value".into(),
                    bias: true,
                },
                out: "attention.dense".into(),
                out_bias: true,
                mlp: MlpKind::Gelu {
                    up: up.into(),
                    down: "mlp.dense_4h_to_h".into(),
                    bias: true,
                },
            },
            hidden: d,
            heads: self.num_attention_heads,
            kv_heads: self.num_attention_heads,
            head_dim,
            intermediate: cx.layer_rows(up, intermediate, true)?,
            num_layers: self.num_hidden_layers,
            vocab: cx.vocab,
            eps: self.layer_norm_eps,
            norm: NormKind::LayerNorm { bias: true },
            position: PositionKind::Rotary {
                dims: (head_dim as f64 * self.rotary_pct) as usize,
                base: self.rotary_emb_base as f32,
            },
            residual: if self.use_parallel_residual {
                Residual::Parallel
            } else {
                Residual::Sequential
            },
            xattn: cx.xattn.clone(),
            ..Default::default()
        })
    }
}
