//! `flamingo-calibration`: precision rewrites over the graph IR, read from
//! and written to an export through `flamingo_graphs::onnx` ([`convert`]).
//!
//! - [`fp16::to_fp16`]: float16 weights and activations, with float32 islands
//!   where float16 breaks (norm statistics, softmax, the tanh gates, rotary
//!   and ALiBi positions: the nodes built under `Scope::fp32`), and an
//!   fp16-safe attention-mask fill (float constants are clamped to ±65504).
//!   Graph inputs and outputs stay float32, cast at the boundary.
//! - [`weights`]: weight-only formats, one file each behind one trait
//!   (int8, int8-ort, int4, int8-flamingo, int4-flamingo), with GPTQ
//!   ([`gptq`]) from Hessians the runtime observes ([`calibrate`]).
//! - [`qdq`], [`observe`], [`tables`]: static int8 from observed ranges,
//!   with TensorRT's and ONNX Runtime's calibration tables.
//! - [`ort_fuse`]: ONNX Runtime's fused kernels for the decoders only it runs.
//! - [`compare`]: two exports of a model, per graph and end to end.

pub mod calibrate;
pub mod compare;
pub mod convert;
pub mod dtypes;
pub mod fp16;
pub mod gptq;
pub mod observe;
pub mod ort_fuse;
pub mod qdq;
pub mod tables;
pub mod weights;
