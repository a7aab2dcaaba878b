//! Flamingo's building blocks over the IR. Each takes
//! `(&mut Scope, &Config, inputs...)` and returns its outputs.

pub mod decoder;
pub mod primitives;
pub mod resampler;
pub mod vision;

pub use resampler::{perceiver_resampler, ResamplerConfig};
pub use vision::{vision_encoder, Activation, VisionConfig};
