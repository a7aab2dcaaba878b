//! A whole torch zip (`checkpoint.pt`, TorchScript archives): the zip
//! reader, the pickle, the storage checks.
#![no_main]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::checkpoint(data));
