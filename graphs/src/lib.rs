//! `flamingo-graphs`: a small typed graph IR, the building blocks of Flamingo
//! (vision encoder, perceiver resampler, gated cross-attention, decoder layers),
//! the layouts of this runtime's own kernels ([`kernels`]), and ONNX files
//! ([`onnx`]: `ModelProto` with external data, written and read back through
//! types generated from ONNX's schema).
//!
//! This crate runs nothing and reads no checkpoint: weights come from a
//! [`WeightSource`], which the exporter implements over the checkpoints. The
//! graphs' I/O names and the manifest types are `flamingo_contract`'s.
//!
//! ```
//! use flamingo_graphs::{DType, Dim, GraphBuilder, NoWeights};
//! let mut g = GraphBuilder::new("double");
//! let x = g.input("x", DType::F32, vec![Dim::sym("n"), Dim::Fixed(4)]);
//! let y = g.scope(&NoWeights, "").add(x, x);
//! g.output(y, "y", DType::F32, vec![Dim::sym("n"), Dim::Fixed(4)]);
//! let graph = g.finish().unwrap();
//! assert_eq!(graph.nodes.len(), 1); // the Add writes the output `y` itself
//! assert_eq!(graph.nodes[0].outputs, ["y"]);
//! ```

pub mod blocks;
mod error;
mod ir;
pub mod kernels;
pub mod onnx;
mod ops;
mod tensor;

pub use error::{Error, Result};
pub use ir::{Attr, Dim, Graph, GraphBuilder, IoSpec, Node, Scope, Value, KEEP_FP32};
pub use tensor::{DType, LoadFn, NoWeights, Tensor, TensorData, WeightSource};
