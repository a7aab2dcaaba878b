//! The restricted unpickler on any bytes: an error, never a panic, a
//! hang or an unbounded allocation.
#![no_main]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::pickle(data));
