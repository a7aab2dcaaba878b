//! What a `tokenizer.json` must be before the `tokenizers` crate parses it.
//!
//! The crate (0.22) panics instead of returning an error on some malformed
//! files: a JSON syntax error inside the `decoder` (its untagged helper is
//! `expect`ed) and a bad base64 or trie in a `Precompiled` normalizer's
//! `precompiled_charsmap`, which it also reads without bounds checks. The
//! exporter and the runtime both run this check first (found by the
//! `tokenizer` fuzz target; its input is kept in
//! `fuzz/regressions/tokenizer/`).

use serde_json::Value;

/// Checks that `text` is strict JSON holding an object, with no
/// `Precompiled` normalizer (SentencePiece charsmaps, which none of the
/// OpenFlamingo releases' tokenizers use); the message says what is wrong.
pub fn check_tokenizer_json(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a tokenizer: the JSON is not an object".into());
    }
    if let Some(n) = v.get("normalizer") {
        if has_precompiled(n) {
            return Err(
                "a `Precompiled` normalizer (a SentencePiece charsmap) is not supported: \
                 the tokenizers crate does not check its bytes"
                    .into(),
            );
        }
    }
    Ok(())
}

fn has_precompiled(v: &Value) -> bool {
    // iterative: the nesting depth is the file's to choose
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(m) => {
                if m.get("type").and_then(Value::as_str) == Some("Precompiled")
                    || m.contains_key("precompiled_charsmap")
                {
                    return true;
                }
                todo.extend(m.values());
            }
            Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    false
}

/// Runs `f`, a call into the `tokenizers` crate, turning a panic of its own
/// (it `expect`s in places a malformed `tokenizer.json` may reach) into an
/// error instead of taking the process down.
pub fn unpanicked<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        format!("the tokenizers crate failed on this tokenizer ({what})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_and_precompiled_normalizers_are_refused() {
        assert!(
            check_tokenizer_json("{\"decoder\": {\"type\": \"x\u{1}\"}}")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(check_tokenizer_json("[1]")
            .unwrap_err()
            .contains("not an object"));
        let pre = r#"{"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": "AAAA"}]}}"#;
        assert!(check_tokenizer_json(pre)
            .unwrap_err()
            .contains("Precompiled"));
        assert!(check_tokenizer_json(r#"{"normalizer": {"type": "NFC"}}"#).is_ok());
    }
}
