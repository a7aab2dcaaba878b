//! What each fuzz target does with its bytes, shared by the libFuzzer
//! targets (`fuzz/fuzz_targets/*.rs`) and the regression test that replays
//! every corpus file and every crash found (`tests/tests/fuzz_corpus.rs`,
//! run by `.ci/run`). Each returns normally on any input: an error is
//! fine, a panic is a bug.

#![allow(dead_code)]

use std::path::Path;

/// The targets, by the name of their corpus directory.
pub const TARGETS: &[&str] = &[
    "pickle",
    "checkpoint",
    "safetensors",
    "shard_index",
    "onnx",
    "configs",
    "tokenizer",
    "image",
    "jsonl",
];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "pickle" => pickle(data),
        "checkpoint" => checkpoint(data),
        "safetensors" => safetensors(data),
        "shard_index" => shard_index(data),
        "onnx" => onnx(data),
        "configs" => configs(data),
        "tokenizer" => tokenizer(data),
        "image" => image(data),
        "jsonl" => jsonl(data),
        other => panic!("no fuzz target `{other}`"),
    }
}

/// The restricted unpickler on any bytes.
pub fn pickle(data: &[u8]) {
    let _ = flamingo_export::pickle::load(Path::new("fuzz.pkl"), data);
}

/// The tensor table of a mapped file; every accepted tensor's bytes are in
/// range, sized as its shape says, and convert.
fn tensors(name: &str, data: &[u8]) {
    let m = flamingo_export::store::Mapped::from_bytes(Path::new(name), data.to_vec());
    if let Ok(read) = flamingo_export::store::read_mapped(m, &Default::default()) {
        for (name, e) in &read.tensors {
            let numel: usize = e.shape.iter().product();
            assert_eq!(e.bytes().len(), numel * e.dtype.size(), "{name}");
            let _ = flamingo_export::store::to_f32_bytes(e.dtype, e.bytes());
        }
    }
}

/// A whole torch zip (`checkpoint.pt`, TorchScript archives): the zip
/// reader with its CRC-32 checks, the pickle, the storages.
pub fn checkpoint(data: &[u8]) {
    if data.starts_with(b"PK") {
        tensors("fuzz.pt", data);
    }
}

/// A `.safetensors` file: the header over the bytes, the offsets.
pub fn safetensors(data: &[u8]) {
    if !data.starts_with(b"PK") {
        tensors("fuzz.safetensors", data);
    }
}

/// A shard index (`*.index.json`).
pub fn shard_index(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let dir = Path::new("/nonexistent");
        let _ =
            flamingo_export::lm::parse_index(text, dir, &dir.join("model.safetensors.index.json"));
    }
}

/// An ONNX model (its external data looked for beside a path that does not
/// exist); what reads back writes again.
pub fn onnx(data: &[u8]) {
    let path = Path::new("/nonexistent/m.onnx");
    if let Ok((g, _)) = flamingo_graphs::onnx::read_bytes(data, path) {
        let _ = flamingo_graphs::onnx::to_bytes(&g, &Default::default());
    }
}

/// `config.json` (every family, mapped to a decoder as a preset is) and
/// `manifest.json`.
pub fn configs(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(lm) = flamingo_export::lm::LmConfig::parse(text, "config.json") {
        let r = flamingo_graphs::blocks::ResamplerConfig {
            dim: 64,
            depth: 1,
            heads: 1,
            dim_head: 64,
            num_latents: 64,
            ff_mult: 4,
            eps: 1e-5,
            max_num_frames: None,
            max_num_media: None,
        };
        let _ = flamingo_export::family::decoder_config(&lm, None, &r, 1);
    }
    let _ = flamingo_contract::Manifest::parse(text, Path::new("manifest.json"));
}

/// A `tokenizer.json`, then a prompt through it and back.
pub fn tokenizer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = flamingo_runtime::tokenizer::Tokenizer::from_json(text) {
        if let Ok(ids) = t.encode("<image>a photo of<|endofchunk|>") {
            let _ = t.decode(&ids);
        }
    }
}

/// Image decoding within a pixel bound, then CLIP preprocessing.
pub fn image(data: &[u8]) {
    if let Ok(img) = flamingo_runtime::preprocess::decode_image_within(data, 4_000_000) {
        let cfg = flamingo_contract::PreprocessConfig::clip(32);
        let _ = flamingo_runtime::preprocess::preprocess(&img, &cfg);
    }
}

/// A line of the `generate --batch` JSONL format.
pub fn jsonl(data: &[u8]) {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = flamingo_runtime::Request::from_json_line(
            line,
            Path::new("/base"),
            &Default::default(),
        );
    }
}
