//! `flamingo-runtime`: runs exported Flamingo graphs through a [`Backend`]:
//! `tract` (pure Rust, the default, nothing to install) or ONNX Runtime
//! (`ort-cpu`, loaded dynamically).
//!
//! ```no_run
//! use flamingo_runtime::{BackendKind, Media, Model};
//! let mut model = Model::load("exported".as_ref(), BackendKind::Tract)?;
//! let enc = model.encode(&[Media::Image("cat.png".into())])?;
//! println!("latents {:?}", enc.latents.shape());
//! # Ok::<(), flamingo_runtime::Error>(())
//! ```

mod backend;
pub mod decoder;
mod error;
mod model;
#[cfg(feature = "ort")]
pub mod ort_backend;
pub mod pipeline;
pub mod preprocess;
pub mod search;
pub mod tokenizer;
pub mod tract_backend;

pub use backend::{Backend, BackendKind, Session, Value};
pub use decoder::{KvCache, MediaKv, Step};
pub use error::{Error, Result};
pub use model::{Encoded, Media, Model};
pub use pipeline::{CandidateScore, Generation, Pipeline, Request, Sequence, TokenEvent};
pub use search::GenerateOptions;
