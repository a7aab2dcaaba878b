//! `flamingo-contract`: the contract between the exporter and any runtime,
//! as data (serde only: nothing here reads a checkpoint or runs a graph).
//!
//! - [`manifest`]: `manifest.json` — format version, model configuration,
//!   each graph's file, I/O, [`Requires`] and [`KvUpdate`], the
//!   preprocessing, the special tokens and every file's sha256;
//! - [`io`]: the graphs' tensor names (`input_ids`, `past_key_values.{i}.key`,
//!   `media_kv.{i}.key`, ...);
//! - [`preprocess`]: open_clip's eval transform settings.
//!
//! ```
//! use flamingo_contract::{GraphRole, Precision};
//! assert_eq!(GraphRole::Decoder.file_name(), "decoder.onnx");
//! assert_eq!(serde_json::to_string(&Precision::Int4Weights).unwrap(), "\"int4-weights\"");
//! ```

mod error;
pub mod io;
pub mod manifest;
pub mod preprocess;
pub mod tokenizer;

pub use error::{Error, Result};
pub use manifest::{
    DecoderInfo, GraphInfo, GraphRole, KvUpdate, LmInfo, Manifest, ModelInfo, Position, Precision,
    Requires, ResamplerInfo, SpecialTokens, TensorInfo, VisionActivation, VisionInfo,
};
pub use preprocess::PreprocessConfig;
pub use tokenizer::check_tokenizer_json;

/// The text of a small file (a config, a manifest, a tokenizer): refused
/// unless it is a regular file (a FIFO or device could block or never end)
/// of at most `max` bytes, and valid UTF-8.
pub fn read_text(path: &std::path::Path, max: u64) -> Result<String> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let bad = |message: String| Error::Invalid {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        // `FILE/name`: say which component is a file, not "Not a directory"
        match path.parent() {
            Some(dir) if e.raw_os_error() == Some(20) && dir.is_file() => Error::Invalid {
                path: dir.display().to_string(),
                message: format!(
                    "a file, where a directory holding `{}` is meant",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
            },
            _ => io(e),
        }
    })?;
    if !meta.is_file() {
        return Err(bad(if meta.is_dir() {
            "a directory, not a file".into()
        } else {
            "not a regular file (a FIFO, socket or device)".into()
        }));
    }
    if meta.len() > max {
        return Err(bad(format!(
            "{} bytes, more than the {max} a text file may have here",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 text (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// What a non-regular file is, for messages.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// The bound [`read_text`] is given for configs, manifests and tokenizers.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;
