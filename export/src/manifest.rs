//! `manifest.json`: what an export contains and how to drive it. Another
//! runtime can load the graphs from this file alone.

use std::collections::BTreeMap;
use std::path::Path;

use flamingo_graphs::{Dim, IoSpec};
use serde::{Deserialize, Serialize};

use crate::config::PreprocessConfig;
use crate::error::{io_err, Error, Result};

pub const FORMAT_VERSION: u32 = 1;

fn fp32() -> String {
    "fp32".into()
}
pub const FILE_NAME: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub producer: String,
    /// `fp32`, `fp16`, `int8-weights`, ...: how the graphs were rewritten.
    #[serde(default = "fp32")]
    pub precision: String,
    pub model: ModelInfo,
    pub preprocess: PreprocessConfig,
    pub special_tokens: SpecialTokens,
    /// Graph role (`vision_encoder`, `resampler`, ...) -> its file and I/O.
    pub graphs: BTreeMap<String, GraphInfo>,
    /// File name -> sha256 (hex) of every file of the export but the manifest.
    pub files: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// LM family (`mpt`, `gpt_neox`, `llama`).
    pub family: String,
    pub cross_attn_every_n_layers: usize,
    pub vision: VisionInfo,
    pub resampler: ResamplerInfo,
    pub decoder: DecoderInfo,
    pub lm: LmInfo,
}

/// How to drive `decoder.onnx` (and `media_kv.onnx`).
///
/// Per call: `input_ids [batch, seq]`, `attention_mask [batch, past_seq + seq]`
/// (1 = token, 0 = left padding), `position_ids [batch, seq]` when
/// `uses_position_ids` (`cumsum(mask) - 1`, padded slots 1), `media_time
/// [batch, seq]` (the 1-based media each token attends to: the running count
/// of `<image>` tokens up to and including it during the prompt, the prompt's
/// total while generating; 0 = no media yet), `num_logits_to_keep [1]`, and
/// for every layer `past_key_values.{i}.key/value [batch, kv_heads, past_seq,
/// head_dim]` (past_seq 0 on the first call). For every gated layer,
/// `media_kv.{i}.key/value [batch, xattn_heads, num_media * num_latents,
/// xattn_dim_head]` from `media_kv.onnx`, computed once per prompt. Outputs
/// `logits [batch, kept, vocab]` and `present.{i}.key/value` (past + seq),
/// which become the next call's past.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderInfo {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Decoder layers preceded by a gated cross-attention block.
    pub gated_layers: Vec<usize>,
    pub uses_position_ids: bool,
    pub xattn_heads: usize,
    pub xattn_dim_head: usize,
    pub num_latents: usize,
    /// `position`: `alibi` or `rotary`.
    pub position: String,
    /// Layout of each past/present tensor.
    pub cache_layout: String,
}

impl From<&flamingo_graphs::blocks::decoder::DecoderConfig> for DecoderInfo {
    fn from(c: &flamingo_graphs::blocks::decoder::DecoderConfig) -> DecoderInfo {
        use flamingo_graphs::blocks::decoder::PositionKind;
        DecoderInfo {
            num_layers: c.num_layers,
            hidden_size: c.hidden,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab,
            gated_layers: c.gated_layers(),
            uses_position_ids: c.uses_position_ids(),
            xattn_heads: c.xattn.heads,
            xattn_dim_head: c.xattn.dim_head,
            num_latents: c.xattn.num_latents,
            position: match c.position {
                PositionKind::Alibi { .. } => "alibi".into(),
                PositionKind::Rotary { .. } => "rotary".into(),
            },
            cache_layout: "[batch, kv_heads, seq, head_dim]".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionInfo {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub activation: String,
    /// Tokens per image (patches, no CLS).
    pub num_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResamplerInfo {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub num_latents: usize,
    pub ff_mult: usize,
    pub max_num_frames: Option<usize>,
    pub max_num_media: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmInfo {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub max_position_embeddings: Option<usize>,
    /// The LM config's `pad_token_id` (fills finished rows while a batch
    /// generates; transformers falls back to the stop token).
    pub pad_token_id: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `<image>`
    pub media: u32,
    /// `<|endofchunk|>`, the default stop token.
    pub end_of_chunk: u32,
    pub pad: Option<u32>,
    pub eos: Option<u32>,
    pub bos: Option<u32>,
}

/// [`GraphInfo::kv_update`] of a decoder that updates its KV buffers in place.
pub const IN_PLACE: &str = "in-place";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphInfo {
    pub file: String,
    /// Set when the graph uses operators only one runtime has
    /// (`onnxruntime` for `com.microsoft` ops such as `MatMulNBits`, and for
    /// `ai.flamingo.MatMulInt8` / `MatMulInt4`, which this runtime's ONNX Runtime backend
    /// registers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
    /// The decoder's KV cache update, when it is not the plain `present =
    /// concat(past, new)`. `in-place` (ONNX Runtime's `GroupQueryAttention`):
    /// `past_key_values.*` may be buffers longer than the past, whose first
    /// `total_seq - seq` positions are the past (`total_seq` is the
    /// `attention_mask` width); `present.*` then have the buffers' length,
    /// this step's K/V written at `[total_seq - seq, total_seq)`, so binding
    /// each present to its past buffer updates the cache in place. Several
    /// new tokens over a non-empty past need batch 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_update: Option<String>,
    pub data_file: Option<String>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub doc: String,
}

/// A graph input or output: dtype name and shape (numbers or symbols).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<serde_json::Value>,
}

impl From<&IoSpec> for TensorInfo {
    fn from(io: &IoSpec) -> TensorInfo {
        TensorInfo {
            name: io.name.clone(),
            dtype: io.dtype.name().to_string(),
            shape: io
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => serde_json::Value::from(*v),
                    Dim::Sym(s) => serde_json::Value::from(s.as_str()),
                })
                .collect(),
        }
    }
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.display().to_string(),
            message: format!("not a valid manifest: {e}"),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::Config {
                path: path.display().to_string(),
                message: format!(
                    "manifest format {} is not supported (this build reads {FORMAT_VERSION}); re-export the model",
                    m.format_version
                ),
            });
        }
        Ok(m)
    }

    pub fn graph(&self, role: &str) -> Result<&GraphInfo> {
        self.graphs.get(role).ok_or_else(|| Error::Config {
            path: FILE_NAME.into(),
            message: format!("the export has no `{role}` graph"),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
