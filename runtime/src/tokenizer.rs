//! The tokenizer (`tokenizer.json` via the `tokenizers` crate); `<image>` and
//! `<|endofchunk|>` are added special tokens in OpenFlamingo's tokenizers.

use std::path::Path;

use crate::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` (never from a hub).
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let text = flamingo_contract::read_text(&path, flamingo_contract::MAX_TEXT_BYTES)?;
        Self::from_json(&text).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
    }

    /// A tokenizer from the text of a `tokenizer.json`.
    pub fn from_json(text: &str) -> Result<Tokenizer, String> {
        flamingo_contract::check_tokenizer_json(text)
            .map_err(|e| format!("not a tokenizer: {e}"))?;
        let inner: tokenizers::Tokenizer =
            flamingo_contract::tokenizer::unpanicked(|| text.parse())
                .map_err(|e| format!("not a tokenizer: {e}"))?
                .map_err(|e| format!("not a tokenizer: {e}"))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text` as `tokenizer(text)` gives them (special tokens
    /// per the tokenizer's post-processor).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let fail = |e: String| Error::Input(format!("tokenizing {text:?}: {e}"));
        let enc = flamingo_contract::tokenizer::unpanicked(|| self.inner.encode(text, true))
            .map_err(fail)?
            .map_err(|e| fail(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt, its `media_token` markers checked against the
    /// `n_media` media given.
    pub fn prompt_ids(&self, prompt: &str, media_token: u32, n_media: usize) -> Result<Vec<u32>> {
        let ids = self.encode(prompt)?;
        if ids.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        let markers = ids.iter().filter(|&&t| t == media_token).count();
        if markers != n_media {
            return Err(Error::Input(format!(
                "the prompt has {markers} <image> marker(s) but {n_media} media item(s) were given"
            )));
        }
        Ok(ids)
    }

    /// Token ids of `text` without the special tokens the post-processor
    /// adds (`tokenizer(text, add_special_tokens=False)`): a continuation
    /// tokenized apart from its prompt.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let fail = |e: String| Error::Input(format!("tokenizing {text:?}: {e}"));
        let enc = flamingo_contract::tokenizer::unpanicked(|| self.inner.encode(text, false))
            .map_err(fail)?
            .map_err(|e| fail(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let fail = |e: String| Error::Input(format!("decoding {ids:?}: {e}"));
        flamingo_contract::tokenizer::unpanicked(|| self.inner.decode(ids, true))
            .map_err(fail)?
            .map_err(|e| fail(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
