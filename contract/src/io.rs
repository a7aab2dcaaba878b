//! The graphs' I/O names, shared by the exporter, the manifest and every
//! runtime. Names follow ONNX Runtime GenAI / Optimum.

/// `vision_encoder` input: `[num_images, 3, S, S]` float32.
pub const PIXEL_VALUES: &str = "pixel_values";
/// `vision_encoder` output, `resampler` input.
pub const VISION_TOKENS: &str = "vision_tokens";
/// `decoder` input: token ids `[batch, seq]` int64.
pub const INPUT_IDS: &str = "input_ids";
/// `decoder` input: `[batch, past_seq + seq]` int64, 1 = real token, 0 = padding.
pub const ATTENTION_MASK: &str = "attention_mask";
/// `decoder` input (rotary families): `[batch, seq]` int64.
pub const POSITION_IDS: &str = "position_ids";
/// `decoder` input: `[batch, seq]` int64, 1-based index of the media each
/// token attends to (0 = none: zero cross-attention output).
pub const MEDIA_TIME: &str = "media_time";
/// `decoder` input: `[1]` int64, how many trailing positions get logits.
pub const NUM_LOGITS_TO_KEEP: &str = "num_logits_to_keep";
/// `decoder` output: `[batch, kept, vocab]` float32.
pub const LOGITS: &str = "logits";
/// `resampler` output, `media_kv` input: `[batch, num_media, num_latents, dim_visual]`.
pub const LATENTS: &str = "latents";

pub fn past_key(layer: usize) -> String {
    format!("past_key_values.{layer}.key")
}
pub fn past_value(layer: usize) -> String {
    format!("past_key_values.{layer}.value")
}
pub fn present_key(layer: usize) -> String {
    format!("present.{layer}.key")
}
pub fn present_value(layer: usize) -> String {
    format!("present.{layer}.value")
}
/// Cross-attention keys of the gated layer before decoder layer `layer`:
/// `[batch, xattn_heads, num_media * num_latents, dim_head]`.
pub fn media_key(layer: usize) -> String {
    format!("media_kv.{layer}.key")
}
pub fn media_value(layer: usize) -> String {
    format!("media_kv.{layer}.value")
}
