//! `manifest.json`: what an export contains and how to drive it. Another
//! runtime can load the graphs from this file alone.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::preprocess::PreprocessConfig;
use crate::{Error, Result};

pub const FORMAT_VERSION: u32 = 1;
pub const FILE_NAME: &str = "manifest.json";

/// The graphs of an export. Ordered as their names sort, as the manifest
/// lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphRole {
    /// The cross-attention LM with its KV cache: `decoder.onnx`.
    Decoder,
    /// Latents -> every gated layer's cross-attention K/V: `media_kv.onnx`.
    MediaKv,
    /// The Perceiver resampler: `resampler.onnx`.
    Resampler,
    /// The open_clip ViT: `vision_encoder.onnx`.
    VisionEncoder,
}

impl GraphRole {
    pub const ALL: [GraphRole; 4] = [
        GraphRole::VisionEncoder,
        GraphRole::Resampler,
        GraphRole::MediaKv,
        GraphRole::Decoder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GraphRole::VisionEncoder => "vision_encoder",
            GraphRole::Resampler => "resampler",
            GraphRole::MediaKv => "media_kv",
            GraphRole::Decoder => "decoder",
        }
    }

    /// The graph's file name in an export (`decoder.onnx`).
    pub fn file_name(self) -> String {
        format!("{}.onnx", self.as_str())
    }
}

impl fmt::Display for GraphRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the graphs were rewritten (`precision` in the manifest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Precision {
    #[default]
    #[serde(rename = "fp32")]
    Fp32,
    /// float32 with ONNX Runtime's fused kernels in the decoder
    /// (`GroupQueryAttention` updating the KV cache in place,
    /// `MultiHeadAttention` over the media K/V, `Gelu`,
    /// `SkipLayerNormalization`): ONNX Runtime only.
    #[serde(rename = "fp32-ort")]
    Fp32Ort,
    /// float16 with float32 islands.
    #[serde(rename = "fp16")]
    Fp16,
    /// Per-channel int8 weights behind `DequantizeLinear`.
    #[serde(rename = "int8-weights")]
    Int8Weights,
    /// int8 weights in ONNX Runtime's `MatMulNBits`.
    #[serde(rename = "int8-weights-ort")]
    Int8WeightsOrt,
    /// int4 weights in ONNX Runtime's `MatMulNBits`.
    #[serde(rename = "int4-weights")]
    Int4Weights,
    /// int8 weights in this runtime's `ai.flamingo.MatMulInt8`.
    #[serde(rename = "int8-weights-flamingo")]
    Int8WeightsFlamingo,
    /// int4 weights in this runtime's `ai.flamingo.MatMulInt4`.
    #[serde(rename = "int4-weights-flamingo")]
    Int4WeightsFlamingo,
    /// Static int8 QDQ graphs from calibration.
    #[serde(rename = "int8-qdq")]
    Int8Qdq,
    /// int8 weights and run-time quantised int8 activations (integer
    /// compute) in ONNX Runtime's `DynamicQuantizeMatMul`.
    #[serde(rename = "int8-dynamic")]
    Int8Dynamic,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp32Ort => "fp32-ort",
            Precision::Fp16 => "fp16",
            Precision::Int8Weights => "int8-weights",
            Precision::Int8WeightsOrt => "int8-weights-ort",
            Precision::Int4Weights => "int4-weights",
            Precision::Int8WeightsFlamingo => "int8-weights-flamingo",
            Precision::Int4WeightsFlamingo => "int4-weights-flamingo",
            Precision::Int8Qdq => "int8-qdq",
            Precision::Int8Dynamic => "int8-dynamic",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the decoder encodes positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// A per-head linear bias on the key distance (MPT, MosaicGPT).
    Alibi,
    /// Rotary embeddings from `position_ids` (GPT-NeoX, LLaMA).
    Rotary,
}

/// The decoder's KV cache update, when it is not `present = concat(past, new)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvUpdate {
    /// ONNX Runtime's `GroupQueryAttention`: see [`GraphInfo::kv_update`].
    #[serde(rename = "in-place")]
    InPlace,
}

/// A runtime a graph needs, when not every ONNX runtime can run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Requires {
    /// `com.microsoft` contrib operators, or this runtime's `ai.flamingo`
    /// kernels (which its ONNX Runtime backend registers).
    Onnxruntime,
}

impl fmt::Display for Requires {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Requires::Onnxruntime => "onnxruntime",
        })
    }
}

/// The vision tower's MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VisionActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    #[serde(rename = "quickgelu")]
    QuickGelu,
    /// Exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
}

impl fmt::Display for VisionActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VisionActivation::QuickGelu => "quickgelu",
            VisionActivation::Gelu => "gelu",
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Position::Alibi => "alibi",
            Position::Rotary => "rotary",
        })
    }
}

impl fmt::Display for KvUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvUpdate::InPlace => "in-place",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub producer: String,
    /// How the graphs were rewritten.
    #[serde(default)]
    pub precision: Precision,
    pub model: ModelInfo,
    pub preprocess: PreprocessConfig,
    pub special_tokens: SpecialTokens,
    /// Each graph's file and I/O.
    pub graphs: BTreeMap<GraphRole, GraphInfo>,
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
    pub position: Position,
    /// Layout of each past/present tensor.
    pub cache_layout: String,
}

/// [`DecoderInfo::cache_layout`] of every export.
pub const CACHE_LAYOUT: &str = "[batch, kv_heads, seq, head_dim]";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionInfo {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub activation: VisionActivation,
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

/// The token ids OpenFlamingo's prompts use.
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

/// `<image>`: the media marker.
pub const MEDIA_TOKEN: &str = "<image>";
/// `<|endofchunk|>`: ends a chunk, the default stop token.
pub const END_OF_CHUNK_TOKEN: &str = "<|endofchunk|>";
/// `<PAD>`: OpenFlamingo's pad token where the tokenizer has none.
pub const PAD_TOKEN: &str = "<PAD>";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphInfo {
    pub file: String,
    /// Set when the graph uses operators only one runtime has
    /// (`onnxruntime` for `com.microsoft` ops such as `MatMulNBits`, and for
    /// `ai.flamingo.MatMulInt8` / `MatMulInt4`, which this runtime's ONNX
    /// Runtime backend registers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Requires>,
    /// The decoder's KV cache update, when it is not the plain `present =
    /// concat(past, new)`. `in-place` (ONNX Runtime's `GroupQueryAttention`):
    /// `past_key_values.*` may be buffers longer than the past, whose first
    /// `total_seq - seq` positions are the past (`total_seq` is the
    /// `attention_mask` width); `present.*` then have the buffers' length,
    /// this step's K/V written at `[total_seq - seq, total_seq)`, so binding
    /// each present to its past buffer updates the cache in place. Several
    /// new tokens over a non-empty past need batch 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_update: Option<KvUpdate>,
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

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE_NAME);
        if dir.is_dir() && !path.exists() {
            return Err(Error::Invalid {
                path: dir.display().to_string(),
                message: format!("no {FILE_NAME}: not a model written by `flamingo export`"),
            });
        }
        let text = crate::read_text(&path, crate::MAX_TEXT_BYTES)?;
        Self::parse(&text, &path)
    }

    /// Parses the text of the manifest at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let bad = |message: String| Error::Invalid {
            path: path.display().to_string(),
            message,
        };
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
        if m.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "manifest format {} is not supported (this build reads {FORMAT_VERSION}); re-export the model",
                m.format_version
            )));
        }
        Ok(m)
    }

    pub fn graph(&self, role: GraphRole) -> Result<&GraphInfo> {
        self.graphs.get(&role).ok_or_else(|| Error::Invalid {
            path: FILE_NAME.into(),
            message: format!("the export has no `{role}` graph"),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_enums_read_and_write_the_manifest_strings() {
        let roles: BTreeMap<GraphRole, u8> = GraphRole::ALL.iter().map(|r| (*r, 0)).collect();
        let j = serde_json::to_string(&roles).unwrap();
        // the map's order is the names' order, as before the roles were typed
        assert_eq!(
            j,
            r#"{"decoder":0,"media_kv":0,"resampler":0,"vision_encoder":0}"#
        );
        for r in GraphRole::ALL {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for p in [
            Precision::Fp32,
            Precision::Fp32Ort,
            Precision::Fp16,
            Precision::Int8Weights,
            Precision::Int8WeightsOrt,
            Precision::Int4Weights,
            Precision::Int8WeightsFlamingo,
            Precision::Int4WeightsFlamingo,
            Precision::Int8Qdq,
            Precision::Int8Dynamic,
        ] {
            let s = serde_json::to_string(&p).unwrap();
            assert_eq!(s, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Precision>(&s).unwrap(), p);
        }
        assert_eq!(
            serde_json::to_string(&KvUpdate::InPlace).unwrap(),
            "\"in-place\""
        );
        assert_eq!(
            serde_json::to_string(&Requires::Onnxruntime).unwrap(),
            "\"onnxruntime\""
        );
        assert_eq!(
            serde_json::to_string(&Position::Alibi).unwrap(),
            "\"alibi\""
        );
        assert_eq!(
            serde_json::to_string(&VisionActivation::QuickGelu).unwrap(),
            "\"quickgelu\""
        );
        assert!(serde_json::from_str::<Precision>("\"int3\"").is_err());
    }
}
