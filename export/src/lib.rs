//! `flamingo-export`: reads OpenFlamingo release checkpoints (open_clip vision
//! weights, a Hugging Face LM directory, `checkpoint.pt`, the tokenizer)
//! without Python and writes the ONNX graphs plus `manifest.json`.
//!
//! - [`store`]: one name -> tensor table over memory-mapped files, read by
//!   [`safetensors`] and by [`zip`] + [`pickle`] (a restricted unpickler:
//!   nothing in a file is executed);
//! - [`lm`] and [`family`]: the LM's `config.json` as a typed config per
//!   family (one file each) and its mapping to the decoder spec;
//!   [`config`]: the vision tower and the resampler from the tensors;
//!   [`presets`]: the official shapes with random weights;
//! - [`export`] / [`export_preset`]: the graphs written into an
//!   [`output::OutputDir`] (renamed into place when complete), with the
//!   manifest of `flamingo_contract`.
//!
//! ```no_run
//! use flamingo_export::{export, ExportOptions, NoProgress};
//! let opts = ExportOptions {
//!     clip: "release/clip/open_clip_pytorch_model.bin".into(),
//!     vision_preset: None,
//!     lm: "release/lm".into(),
//!     checkpoint: "release/checkpoint.pt".into(),
//!     tokenizer: None, // the LM directory's own
//!     cross_attn_every_n_layers: None, // read from checkpoint.pt
//!     out: "exported".into(),
//!     force: false,
//!     release: Some("openflamingo-3b-vitl-mpt1b".into()),
//!     ..Default::default()
//! };
//! let manifest = export(&opts, &mut NoProgress)?;
//! println!("{}", manifest.graphs.len());
//! # Ok::<(), flamingo_export::Error>(())
//! ```

pub mod config;
mod error;
pub mod family;
pub mod files;
pub mod lm;
pub mod output;
pub mod pickle;
pub mod presets;
pub mod releases;
pub mod safetensors;
pub mod store;
pub mod tokens;
mod write;
pub mod zip;

pub use error::{Error, Result};
pub use output::{hash_files, sha256_file, OutputDir};
pub use store::TensorStore;
pub use write::{
    build_decoder_graph, build_media_kv_graph, build_resampler_graph, build_vision_graph, export,
    export_preset, write_spec, ExportOptions, NoProgress, Progress, Release, Rewrite, Spec,
};
