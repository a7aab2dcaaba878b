//! `flamingo-runtime`: runs exported Flamingo graphs through a [`Backend`]:
//! `tract` (pure Rust, the default, nothing to install) or ONNX Runtime
//! (`ort-cpu`, loaded dynamically).
//!
//! The [`Pipeline`] is what applications drive: interleaved image/text
//! prompts, greedy / beam / sampling generation, streaming, close-ended
//! scoring and batches. It reads an export through its manifest
//! (`flamingo_contract`) alone: nothing here reads a checkpoint. The same
//! example runs, on the bundled tiny model, as a test of `flamingo-tests`
//! (`tests/tests/readme.rs`).
//!
//! ```no_run
//! use flamingo_runtime::{BackendKind, GenerateOptions, Media, Pipeline, Request};
//! # let (dir, cat, dog) = ("of-3b", "cat.png", "dog.png");
//! // `dir` is a directory written by `flamingo export`
//! let mut flamingo = Pipeline::load(dir.as_ref(), BackendKind::Tract)?;
//!
//! // few-shot: one <image> marker per media item, in order
//! let request = Request {
//!     prompt: "<image>An apple.<|endofchunk|><image>A photo of".into(),
//!     media: vec![Media::Image(cat.into()), Media::Image(dog.into())],
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
//! let scores = flamingo.score("<image>Question: what is it? Answer:", &[Media::Image(cat.into())],
//!                             &[" a cat.".to_string(), " a dog.".to_string()])?;
//! assert_eq!(scores.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backend;
pub mod decoder;
mod error;
pub mod gpu;
mod graph_cache;
pub mod int4_matmul;
pub mod int8_matmul;
pub mod limits;
pub mod media_cache;
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
pub mod verify;

pub use backend::{Backend, BackendKind, Input, Resident, Session, Value, ValueRef};
pub use backend::{CacheUse, GraphKey};
pub use decoder::{KvCache, KvStore, MediaKv, Step};
pub use error::{Error, Result};
pub use limits::Limits;
pub use model::{Encoded, GraphLoad, LoadOptions, LoadTimes, Media, Model, Observer};
pub use pipeline::{CandidateScore, Generation, Pipeline, Request, Sequence, TokenEvent};
pub use search::{GenerateOptions, Search};
