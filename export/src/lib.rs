//! `flamingo-export`: reads OpenFlamingo release checkpoints (open_clip vision
//! weights, a Hugging Face LM directory, `checkpoint.pt`, the tokenizer)
//! without Python and writes the ONNX graphs plus `manifest.json`.
//!
//! ```no_run
//! use flamingo_export::{export, ExportOptions, NoProgress};
//! let opts = ExportOptions {
//!     clip: "release/clip/open_clip_pytorch_model.bin".into(),
//!     vision_preset: None,
//!     lm: "release/lm".into(),
//!     checkpoint: "release/checkpoint.pt".into(),
//!     tokenizer: "release/tokenizer".into(),
//!     cross_attn_every_n_layers: 1,
//!     out: "exported".into(),
//!     force: false,
//!     rewrite: None,
//! };
//! let manifest = export(&opts, &mut NoProgress)?;
//! println!("{}", manifest.graphs.len());
//! # Ok::<(), flamingo_export::Error>(())
//! ```

pub mod config;
mod error;
pub mod family;
pub mod lm;
pub mod manifest;
pub mod onnx_read;
pub mod pickle;
pub mod presets;
pub mod safetensors;
pub mod store;
pub mod tokens;
mod write;
pub mod zip;

pub use error::{Error, Result};
pub use manifest::Manifest;
pub use store::TensorStore;
pub use write::{
    export, export_preset, hash_files, replace_dir, sha256_file, temp_dir_for, ExportOptions,
    NoProgress, Progress, Release, Rewrite, Spec,
};
