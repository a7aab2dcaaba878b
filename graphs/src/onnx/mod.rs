//! ONNX files: [`write`] a [`crate::Graph`] as a `ModelProto` with external
//! data, [`read`] one back. Both go through the types generated from ONNX's
//! own schema ([`proto`]), so the wire format is written down once.

pub mod proto;
mod read;
mod write;

pub use read::{read, read_bytes};
pub use write::{to_bytes, write, WriteOptions, Written, EXTERNAL_THRESHOLD, IR_VERSION, OPSET};
