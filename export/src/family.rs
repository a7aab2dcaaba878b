//! One table per LM family: where each canonical tensor lives in the
//! checkpoint, and how the family computes. A new family is a new table.
//! All names are under `lang_encoder.` (the LM's own names, as OpenFlamingo
//! nests them; `checkpoint.pt` overrides the embeddings).

use flamingo_graphs::blocks::decoder::{
    DecoderConfig, LayerNames, MlpKind, NormKind, PositionKind, QkvLayout, Residual, XAttnConfig,
};
use flamingo_graphs::blocks::ResamplerConfig;

use crate::config::count_layers;
use crate::error::{Error, Result};
use crate::lm::{LmConfig, SUPPORTED_FAMILIES};
use crate::store::TensorStore;

/// A family's tensor names (relative to `lang_encoder.`) and fixed traits.
pub struct Family {
    pub model_type: &'static str,
    pub layers: &'static str,
    pub embed: &'static str,
    pub final_norm: &'static str,
    /// LM head candidates, in order (the last is the tied embedding).
    pub lm_head: &'static [&'static str],
    pub ln1: &'static str,
    pub ln2: &'static str,
    pub qkv: fn(bias: bool) -> QkvLayout,
    pub out: &'static str,
    pub mlp: fn(bias: bool) -> MlpKind,
    pub norm: fn(&LmConfig) -> NormKind,
    /// Whether projections carry biases.
    pub bias: fn(&LmConfig) -> bool,
    pub eps_keys: &'static [&'static str],
    pub heads_keys: &'static [&'static str],
    pub kv_heads_keys: &'static [&'static str],
    pub position: fn(&LmConfig, head_dim: usize) -> PositionKind,
    pub residual: fn(&LmConfig) -> Residual,
    /// Config key of the MLP width; `None`: read it from the up projection.
    pub intermediate_key: Option<&'static str>,
    /// Relative name (under a layer) of the tensor whose rows give the MLP width.
    pub up_proj: &'static str,
}

fn s(x: &str) -> String {
    x.to_string()
}

pub const MPT: Family = Family {
    model_type: "mpt",
    layers: "transformer.blocks",
    embed: "transformer.wte.weight",
    final_norm: "transformer.norm_f",
    lm_head: &["lm_head.weight", "transformer.wte.weight"],
    ln1: "norm_1",
    ln2: "norm_2",
    qkv: |bias| QkvLayout::Fused {
        name: s("attn.Wqkv"),
        bias,
    },
    out: "attn.out_proj",
    mlp: |bias| MlpKind::Gelu {
        up: s("ffn.up_proj"),
        down: s("ffn.down_proj"),
        bias,
    },
    norm: |c| NormKind::LayerNorm { bias: !no_bias(c) },
    bias: |c| !no_bias(c),
    eps_keys: &["layer_norm_epsilon"],
    heads_keys: &["n_heads"],
    kv_heads_keys: &["n_heads"],
    position: |c, _| PositionKind::Alibi {
        bias_max: c
            .raw
            .get("attn_config")
            .and_then(|a| a.get("alibi_bias_max"))
            .and_then(|v| v.as_f64())
            .unwrap_or(8.0) as f32,
    },
    residual: |_| Residual::Sequential,
    // transformers' MPT MLP is 4x wide whatever `expansion_ratio` says
    intermediate_key: None,
    up_proj: "ffn.up_proj.weight",
};

fn no_bias(c: &LmConfig) -> bool {
    c.raw
        .get("no_bias")
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}

pub const GPT_NEOX: Family = Family {
    model_type: "gpt_neox",
    layers: "gpt_neox.layers",
    embed: "gpt_neox.embed_in.weight",
    final_norm: "gpt_neox.final_layer_norm",
    lm_head: &["embed_out.weight", "gpt_neox.embed_in.weight"],
    ln1: "input_layernorm",
    ln2: "post_attention_layernorm",
    qkv: |bias| QkvLayout::FusedPerHead {
        name: s("attention.query_key_value"),
        bias,
    },
    out: "attention.dense",
    mlp: |bias| MlpKind::Gelu {
        up: s("mlp.dense_h_to_4h"),
        down: s("mlp.dense_4h_to_h"),
        bias,
    },
    norm: |_| NormKind::LayerNorm { bias: true },
    bias: |_| true,
    eps_keys: &["layer_norm_eps"],
    heads_keys: &["num_attention_heads"],
    kv_heads_keys: &["num_attention_heads"],
    position: |c, hd| {
        let pct = c
            .raw
            .get("rotary_pct")
            .and_then(|v| v.as_f64())
            .unwrap_or(1.0);
        PositionKind::Rotary {
            dims: (hd as f64 * pct) as usize,
            base: c
                .raw
                .get("rotary_emb_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
        }
    },
    residual: |c| {
        if c.raw
            .get("use_parallel_residual")
            .and_then(|v| v.as_bool())
            .unwrap_or(true)
        {
            Residual::Parallel
        } else {
            Residual::Sequential
        }
    },
    intermediate_key: Some("intermediate_size"),
    up_proj: "mlp.dense_h_to_4h.weight",
};

pub const LLAMA: Family = Family {
    model_type: "llama",
    layers: "model.layers",
    embed: "model.embed_tokens.weight",
    final_norm: "model.norm",
    lm_head: &["lm_head.weight", "model.embed_tokens.weight"],
    ln1: "input_layernorm",
    ln2: "post_attention_layernorm",
    qkv: |bias| QkvLayout::Separate {
        q: s("self_attn.q_proj"),
        k: s("self_attn.k_proj"),
        v: s("self_attn.v_proj"),
        bias,
    },
    out: "self_attn.o_proj",
    mlp: |_| MlpKind::SwiGlu {
        gate: s("mlp.gate_proj"),
        up: s("mlp.up_proj"),
        down: s("mlp.down_proj"),
    },
    norm: |_| NormKind::RmsNorm,
    bias: |c| {
        c.raw
            .get("attention_bias")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    },
    eps_keys: &["rms_norm_eps"],
    heads_keys: &["num_attention_heads"],
    kv_heads_keys: &["num_key_value_heads", "num_attention_heads"],
    position: |c, hd| PositionKind::Rotary {
        dims: hd,
        base: c
            .raw
            .get("rope_theta")
            .and_then(|v| v.as_f64())
            .unwrap_or(10000.0) as f32,
    },
    residual: |_| Residual::Sequential,
    intermediate_key: Some("intermediate_size"),
    up_proj: "mlp.up_proj.weight",
};

pub const FAMILIES: &[&Family] = &[&MPT, &GPT_NEOX, &LLAMA];

pub fn family(model_type: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_type == model_type)
        .ok_or_else(|| Error::UnsupportedFamily {
            got: model_type.to_string(),
            supported: SUPPORTED_FAMILIES.to_vec(),
        })
}

const P: &str = "lang_encoder.";

fn shape(store: &TensorStore, name: &str) -> Result<Vec<usize>> {
    store.shape(name).map(|s| s.to_vec()).ok_or_else(|| {
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

/// The decoder's configuration: sizes from the tensors, checked against the
/// LM config (a disagreement names the tensor and both shapes).
pub fn decoder_config(
    lm: &LmConfig,
    store: &TensorStore,
    resampler: &ResamplerConfig,
    every_n: usize,
) -> Result<DecoderConfig> {
    let f = family(&lm.model_type)?;
    let hidden = lm.hidden_size()?;
    let heads = lm.require(f.heads_keys)?;
    let kv_heads = lm.require(f.kv_heads_keys)?;
    if heads == 0 || hidden % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::Config {
            path: lm.path.clone(),
            message: format!("hidden size {hidden} with {heads} heads and {kv_heads} key/value heads is not a valid layout"),
        });
    }
    let head_dim = hidden / heads;
    let layers_path = format!("{P}{}", f.layers);
    let embed = format!("{P}{}", f.embed);
    let emb = shape(store, &embed)?;
    let vocab = emb.first().copied().unwrap_or(0);
    if emb.len() != 2 || emb[1] != hidden {
        return Err(mismatch(&embed, vec![vocab, hidden], emb));
    }
    let num_layers = lm.num_layers()?;
    let found = count_layers(
        store,
        &format!("{layers_path}."),
        &format!(".{}.weight", f.ln1),
    );
    if found != num_layers {
        return Err(Error::Config {
            path: lm.path.clone(),
            message: format!(
                "the config says {num_layers} layers but the weights have {found} (`{layers_path}.{}.{}.weight`)",
                found.min(num_layers),
                f.ln1
            ),
        });
    }
    let up = format!("{layers_path}.0.{}", f.up_proj);
    let up_rows = shape(store, &up)?[0];
    let intermediate = match f.intermediate_key {
        Some(k) => {
            let v = lm.require(&[k])?;
            if v != up_rows {
                return Err(mismatch(&up, vec![v, hidden], shape(store, &up)?));
            }
            v
        }
        None => up_rows,
    };
    let lm_head = f
        .lm_head
        .iter()
        .map(|n| format!("{P}{n}"))
        .find(|n| store.get_entry(n).is_some())
        .unwrap_or_else(|| format!("{P}{}", f.lm_head[0]));
    let eps = lm
        .raw
        .as_object()
        .and_then(|o| f.eps_keys.iter().find_map(|k| o.get(*k)?.as_f64()))
        .unwrap_or(1e-5) as f32;
    // gated blocks where (i+1) % n != 0 mean the wrong --cross-attn-every-n-layers
    for i in 0..num_layers {
        let name = format!("{layers_path}.{i}.gated_cross_attn_layer.attn_gate");
        let has = store.get_entry(&name).is_some();
        if has != ((i + 1) % every_n == 0) {
            return Err(Error::Config {
                path: "--cross-attn-every-n-layers".into(),
                message: format!(
                    "{every_n} does not match the checkpoint: `{name}` is {}",
                    if has { "present" } else { "missing" }
                ),
            });
        }
    }
    // the gated blocks: sizes from the first one
    let first = (0..num_layers)
        .find(|i| (i + 1) % every_n == 0)
        .unwrap_or(0);
    let xq = format!("{layers_path}.{first}.gated_cross_attn_layer.attn.to_q.weight");
    let inner = shape(store, &xq)?[0];
    let ff = format!("{layers_path}.{first}.gated_cross_attn_layer.ff.1.weight");
    let ff_rows = shape(store, &ff)?[0];
    let dim_head = 64;
    if inner % dim_head != 0 {
        return Err(mismatch(
            &xq,
            vec![8 * dim_head, hidden],
            shape(store, &xq)?,
        ));
    }
    let bias = (f.bias)(lm);
    Ok(DecoderConfig {
        layers_path,
        embed,
        final_norm: format!("{P}{}", f.final_norm),
        lm_head,
        names: LayerNames {
            ln1: f.ln1.into(),
            ln2: f.ln2.into(),
            qkv: (f.qkv)(bias),
            out: f.out.into(),
            out_bias: bias,
            mlp: (f.mlp)(bias),
        },
        hidden,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        num_layers,
        vocab,
        eps,
        norm: (f.norm)(lm),
        position: (f.position)(lm, head_dim),
        residual: (f.residual)(lm),
        xattn: XAttnConfig {
            every_n,
            heads: inner / dim_head,
            dim_head,
            ff_mult: ff_rows / hidden.max(1),
            dim_visual: resampler.dim,
            num_latents: resampler.num_latents,
            eps: 1e-5,
        },
    })
}
