//! Special token ids from `tokenizer.json` (OpenFlamingo's added tokens).

use std::path::Path;

use serde_json::Value;

use flamingo_contract::manifest::{END_OF_CHUNK_TOKEN, MEDIA_TOKEN, PAD_TOKEN};
use flamingo_contract::SpecialTokens;

use crate::error::{io_err, Error, Result};

/// Files of a tokenizer directory copied into an export.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Finds `<image>`, `<|endofchunk|>` and the pad/eos/bos tokens.
pub fn special_tokens(dir: &Path, lm: &crate::lm::LmConfig) -> Result<SpecialTokens> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let bad = |m: String| Error::Config {
        path: path.display().to_string(),
        message: m,
    };
    let j: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let added = j
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let find = |content: &str| -> Option<u32> {
        added.iter().find_map(|t| {
            (t.get("content")?.as_str()? == content)
                .then(|| t.get("id")?.as_u64().map(|v| v as u32))?
        })
    };
    let map: Value = std::fs::read_to_string(dir.join("special_tokens_map.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let named = |k: &str| -> Option<u32> {
        let v = map.get(k)?;
        let content = v.as_str().or_else(|| v.get("content")?.as_str())?;
        find(content)
    };
    Ok(SpecialTokens {
        media: find(MEDIA_TOKEN).ok_or_else(|| {
            bad(format!(
                "no `{MEDIA_TOKEN}` added token (not an OpenFlamingo tokenizer?)"
            ))
        })?,
        end_of_chunk: find(END_OF_CHUNK_TOKEN)
            .ok_or_else(|| bad(format!("no `{END_OF_CHUNK_TOKEN}` added token")))?,
        pad: named("pad_token").or_else(|| find(PAD_TOKEN)),
        eos: named("eos_token").or(lm.tokens.eos_token_id),
        bos: named("bos_token").or(lm.tokens.bos_token_id),
    })
}
