//! `config.json` (every family, mapped to a decoder as a preset is) and
//! `manifest.json`.
#![no_main]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::configs(data));
