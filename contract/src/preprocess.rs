//! CLIP preprocessing settings (FLAMINGO.md section 3): what a runtime does
//! to an image before the vision encoder.

use serde::{Deserialize, Serialize};

/// open_clip's eval transform: resize the shorter side to `image_size`
/// (bicubic), center-crop, scale to [0, 1], normalise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub image_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub interpolation: String,
    pub resize_mode: String,
}

/// open_clip's OpenAI mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// open_clip's OpenAI std.
#[allow(clippy::excessive_precision)] // open_clip's constants, verbatim
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl PreprocessConfig {
    /// open_clip's defaults at `image_size` (bicubic, shortest side).
    pub fn clip(image_size: usize) -> PreprocessConfig {
        PreprocessConfig {
            image_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            interpolation: "bicubic".into(),
            resize_mode: "shortest".into(),
        }
    }
}
