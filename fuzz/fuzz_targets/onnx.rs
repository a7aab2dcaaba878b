//! An ONNX model (its external data looked for beside a path that does
//! not exist).
#![no_main]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::onnx(data));
