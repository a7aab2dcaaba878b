//! `flamingo-contract`: the contract between the exporter and any runtime,
//! as data (serde only: nothing here reads a checkpoint or runs a graph).
//!
//! - [`manifest`]: `manifest.json` — format version, model configuration,
//!   each graph's file, I/O, [`Requires`] and [`KvUpdate`], the
//!   preprocessing, the special tokens and every file's sha256;
//! - [`io`]: the graphs' tensor names (`input_ids`, `past_key_values.{i}.key`,
//!   `media_kv.{i}.key`, ...);
//! - [`preprocess`]: open_clip's eval transform settings.
//!
//! ```
//! use flamingo_contract::{GraphRole, Precision};
//! assert_eq!(GraphRole::Decoder.file_name(), "decoder.onnx");
//! assert_eq!(serde_json::to_string(&Precision::Int4Weights).unwrap(), "\"int4-weights\"");
//! ```

mod error;
pub mod io;
pub mod manifest;
pub mod preprocess;

pub use error::{Error, Result};
pub use manifest::{
    DecoderInfo, GraphInfo, GraphRole, KvUpdate, LmInfo, Manifest, ModelInfo, Position, Precision,
    Requires, ResamplerInfo, SpecialTokens, TensorInfo, VisionActivation, VisionInfo,
};
pub use preprocess::PreprocessConfig;
