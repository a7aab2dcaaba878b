//! `flamingo-calibration`: precision rewrites over the graph IR.
//!
//! - [`fp16::to_fp16`]: float16 weights and activations, with float32 islands
//!   where float16 breaks (norm statistics, softmax, the tanh gates, rotary
//!   and ALiBi positions: the nodes built under `Scope::fp32`), and an
//!   fp16-safe attention-mask fill (float constants are clamped to ±65504).
//!   Graph inputs and outputs stay float32, cast at the boundary.

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
