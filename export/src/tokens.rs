//! The export's tokenizer: the LM repo's own, with OpenFlamingo's tokens
//! added where it lacks them, exactly as open_flamingo 2.0.1's factory adds
//! them: `<|endofchunk|>` and `<image>` as additional special tokens, in
//! that order, then `<PAD>` as the pad token when there is none (each at
//! the next id, as `len(tokenizer)` counts); and the special token ids.

use std::path::Path;

use serde_json::Value;
use tokenizers::{AddedToken, Tokenizer};

use flamingo_contract::manifest::{END_OF_CHUNK_TOKEN, MEDIA_TOKEN, PAD_TOKEN};
use flamingo_contract::SpecialTokens;

use crate::error::{Error, Result};

/// Files of a tokenizer directory copied into an export.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// A tokenizer ready for the export.
#[derive(Clone, Debug)]
pub struct ExportTokenizer {
    /// The tokens added to the LM repo's tokenizer, in order (none for an
    /// OpenFlamingo tokenizer).
    pub added: Vec<&'static str>,
    /// `tokenizer.json` and `special_tokens_map.json` to write instead of
    /// the source's (when tokens were added).
    pub tokenizer_json: Option<String>,
    pub special_tokens_map: Option<String>,
    pub special: SpecialTokens,
    /// `len(tokenizer)`: every id, added tokens included.
    pub len: usize,
}

/// The named special token of `special_tokens_map.json` (a string or
/// `{"content": ...}`).
fn named(map: &Value, key: &str) -> Option<String> {
    let v = map.get(key)?;
    v.as_str()
        .or_else(|| v.get("content")?.as_str())
        .map(String::from)
}

/// Reads `dir/tokenizer.json`, adds OpenFlamingo's tokens where missing and
/// finds `<image>`, `<|endofchunk|>` and the pad/eos/bos tokens.
pub fn prepare(dir: &Path, lm: &crate::lm::LmConfig) -> Result<ExportTokenizer> {
    let path = dir.join("tokenizer.json");
    let bad = |m: String| Error::Config {
        path: path.display().to_string(),
        message: m,
    };
    let text = crate::files::read_text(&path)?;
    flamingo_contract::check_tokenizer_json(&text).map_err(bad)?;
    let mut tok: Tokenizer = flamingo_contract::tokenizer::unpanicked(|| text.parse())
        .map_err(bad)?
        .map_err(|e| bad(format!("not a tokenizer: {e}")))?;
    let map_path = dir.join("special_tokens_map.json");
    let mut map: Value = if map_path.exists() {
        let t = crate::files::read_text(&map_path)?;
        serde_json::from_str(&t).map_err(|e| Error::Config {
            path: map_path.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })?
    } else {
        Value::Object(Default::default())
    };
    let id = |tok: &Tokenizer, content: &str| tok.token_to_id(content);
    let mut added = Vec::new();
    let mut missing: Vec<&'static str> = [END_OF_CHUNK_TOKEN, MEDIA_TOKEN]
        .into_iter()
        .filter(|t| id(&tok, t).is_none())
        .collect();
    if !missing.is_empty() {
        // the factory adds both as additional special tokens
        let tokens: Vec<AddedToken> = missing.iter().map(|t| AddedToken::from(*t, true)).collect();
        tok.add_special_tokens(&tokens);
        let extra = map
            .as_object_mut()
            .map(|m| {
                m.entry("additional_special_tokens")
                    .or_insert_with(|| Value::Array(vec![]))
            })
            .and_then(|v| v.as_array_mut());
        if let Some(extra) = extra {
            for t in &missing {
                extra.push(Value::from(*t));
            }
        }
        added.append(&mut missing);
    }
    let pad_name = named(&map, "pad_token");
    let mut pad = pad_name.as_deref().and_then(|p| id(&tok, p));
    if pad_name.is_none() {
        // `pad_token` unset: the factory sets it to `<PAD>`, added if new
        if id(&tok, PAD_TOKEN).is_none() {
            tok.add_special_tokens(&[AddedToken::from(PAD_TOKEN, true)]);
            added.push(PAD_TOKEN);
        }
        if let Some(m) = map.as_object_mut() {
            m.insert("pad_token".into(), Value::from(PAD_TOKEN));
        }
        pad = id(&tok, PAD_TOKEN);
    }
    let media = id(&tok, MEDIA_TOKEN)
        .ok_or_else(|| bad(format!("no `{MEDIA_TOKEN}` token after adding it")))?;
    let end_of_chunk = id(&tok, END_OF_CHUNK_TOKEN)
        .ok_or_else(|| bad(format!("no `{END_OF_CHUNK_TOKEN}` token after adding it")))?;
    let special = SpecialTokens {
        media,
        end_of_chunk,
        pad,
        eos: named(&map, "eos_token")
            .and_then(|t| id(&tok, &t))
            .or(lm.tokens.eos_token_id),
        bos: named(&map, "bos_token")
            .and_then(|t| id(&tok, &t))
            .or(lm.tokens.bos_token_id),
    };
    let (tokenizer_json, special_tokens_map) = if added.is_empty() {
        (None, None)
    } else {
        let json = tok
            .to_string(true)
            .map_err(|e| bad(format!("writing the tokenizer back: {e}")))?;
        let map = serde_json::to_string_pretty(&map).unwrap_or_default();
        (Some(json), Some(map))
    };
    Ok(ExportTokenizer {
        added,
        tokenizer_json,
        special_tokens_map,
        special,
        len: tok.get_vocab_size(true),
    })
}
