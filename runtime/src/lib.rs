//! `flamingo-runtime`: runs exported Flamingo graphs through a [`Backend`]:
//! `tract` (pure Rust, the default, nothing to install) or ONNX Runtime
//! (`ort-cpu`, loaded dynamically).
//!
//! The [`Pipeline`] is what applications drive: interleaved image/text
//! prompts, greedy / beam / sampling generation, streaming, close-ended
//! scoring and batches.
//!
//! ```
//! use flamingo_runtime::{BackendKind, GenerateOptions, Media, Pipeline, Request};
//! # let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-mpt");
//! # let dir = std::env::temp_dir().join(format!("flamingo-doc-{}", std::process::id()));
//! # flamingo_export::export(&flamingo_export::ExportOptions {
//! #     clip: fixture.join("clip/open_clip_pytorch_model.bin"), vision_preset: None,
//! #     lm: fixture.join("lm"), checkpoint: fixture.join("checkpoint.pt"),
//! #     tokenizer: fixture.join("tokenizer"), cross_attn_every_n_layers: 1,
//! #     out: dir.clone(), force: true, rewrite: None }, &mut flamingo_export::NoProgress)?;
//! # let (cat, dog) = (fixture.join("images/img1.png"), fixture.join("images/img0.png"));
//! // `dir` is a directory written by `flamingo export`
//! let mut flamingo = Pipeline::load(&dir, BackendKind::Tract)?;
//!
//! // few-shot: one <image> marker per media item, in order
//! let request = Request {
//!     prompt: "<image>An apple.<|endofchunk|><image>A photo of".into(),
//!     media: vec![Media::Image(cat.clone()), Media::Image(dog.clone())],
//!     options: GenerateOptions { max_new_tokens: 8, num_beams: 3, ..Default::default() },
//! };
//! let out = flamingo.generate(&request)?;
//! println!("{}", out.sequences[0].text);
//!
//! // streaming: tokens as they are produced (return false to stop)
//! let greedy = Request { options: GenerateOptions::default(), ..request };
//! flamingo.generate_stream(&greedy, &mut |t| { print!("{}", t.text); true })?;
//!
//! // close-ended scoring: sum of candidate-token log-probabilities
//! let scores = flamingo.score("<image>Question: what is it? Answer:", &[Media::Image(cat)],
//!                             &[" a cat.".to_string(), " a dog.".to_string()])?;
//! assert_eq!(scores.len(), 2);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backend;
pub mod decoder;
mod error;
pub mod gpu;
pub mod int4_matmul;
pub mod int8_matmul;
mod model;
#[cfg(feature = "ort")]
pub mod ort_backend;
#[cfg(feature = "ort")]
mod ort_quant;
pub mod pipeline;
pub mod preprocess;
pub mod search;
pub mod tokenizer;
pub mod tract_backend;

pub use backend::{Backend, BackendKind, Input, Resident, Session, Value, ValueRef};
pub use decoder::{KvCache, MediaKv, Step};
pub use error::{Error, Result};
pub use model::{Encoded, Media, Model, Observer};
pub use pipeline::{CandidateScore, Generation, Pipeline, Request, Sequence, TokenEvent};
pub use search::GenerateOptions;
