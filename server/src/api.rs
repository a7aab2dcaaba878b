//! OpenAI's request bodies as this server reads them: chat messages with
//! `text`, `image_url` and (a Flamingo extension) `video` parts become
//! the interleaved few-shot prompt; the sampling fields become
//! [`GenerateOptions`].

use std::path::{Path, PathBuf};

use base64::Engine as _;
use flamingo_runtime::{GenerateOptions, Media};
use serde_json::Value;

/// A request error: the message the client gets with a 400.
pub type BadRequest = String;

/// Where media of a request may come from and go to.
pub struct MediaPolicy<'a> {
    /// `file://` URLs are served only under this directory.
    pub local: Option<&'a Path>,
    /// Where `data:` URLs are written for the runtime to read.
    pub scratch: &'a Path,
    /// A request-unique stem for the files written.
    pub stem: String,
    pub max_media: usize,
}

/// The media of one request and the files written for it.
#[derive(Default)]
pub struct Collected {
    pub media: Vec<Media>,
    pub files: Vec<PathBuf>,
    /// What each file is in the request (`messages[1].content[0]`), to
    /// name it in errors in place of its scratch path.
    pub labels: Vec<(String, String)>,
}

impl Drop for Collected {
    fn drop(&mut self) {
        // unless handed to the engine (which then removes them)
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Collected {
    /// Hands the files over: they are no longer removed on drop.
    pub fn take_files(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.files)
    }

    fn path_of(
        &mut self,
        url: &str,
        policy: &MediaPolicy,
        what: &str,
    ) -> Result<PathBuf, BadRequest> {
        if let Some(rest) = url.strip_prefix("data:") {
            let Some((head, data)) = rest.split_once(',') else {
                return Err(format!("{what}: a data URL without a comma"));
            };
            if !head.ends_with(";base64") {
                return Err(format!(
                    "{what}: only base64 data URLs are read (data:image/...;base64,...)"
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("{what}: the base64 data does not decode: {e}"))?;
            let path = policy
                .scratch
                .join(format!("{}-{}.media", policy.stem, self.files.len()));
            std::fs::write(&path, &bytes)
                .map_err(|e| format!("{what}: cannot keep the image: {e}"))?;
            self.files.push(path.clone());
            self.labels
                .push((path.display().to_string(), what.to_string()));
            return Ok(path);
        }
        if let Some(rest) = url.strip_prefix("file://") {
            let Some(root) = policy.local else {
                return Err(format!(
                    "{what}: file:// URLs are refused (the server was not started with --allow-local-media)"
                ));
            };
            let root = root
                .canonicalize()
                .map_err(|e| format!("--allow-local-media {}: {e}", root.display()))?;
            let path = Path::new(rest)
                .canonicalize()
                .map_err(|e| format!("{what}: {rest}: {e}"))?;
            if !path.starts_with(&root) {
                return Err(format!("{what}: {rest} is outside --allow-local-media"));
            }
            return Ok(path);
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Err(format!(
                "{what}: remote URLs are refused; send the image as a data: URL"
            ));
        }
        Err(format!("{what}: not a data: or file:// URL"))
    }

    fn push(&mut self, m: Media, policy: &MediaPolicy) -> Result<(), BadRequest> {
        if self.media.len() >= policy.max_media {
            return Err(format!(
                "more than {} images or videos in one request (--max-images)",
                policy.max_media
            ));
        }
        self.media.push(m);
        Ok(())
    }
}

fn url_of(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("url").and_then(Value::as_str))
}

/// `messages` as the few-shot prompt: each message's parts in order
/// (`<image>` for each image or video), the messages joined by
/// `<|endofchunk|>`.
pub fn chat_prompt(
    messages: &Value,
    policy: &MediaPolicy,
) -> Result<(String, Collected), BadRequest> {
    let list = messages
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or("`messages` must be a non-empty list")?;
    let mut media = Collected::default();
    let mut turns = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "user" | "assistant" | "developer") => {}
            Some(r) => return Err(format!("{at}: unknown role {r:?}")),
            None => return Err(format!("{at}: no `role`")),
        }
        let content = m.get("content").ok_or(format!("{at}: no `content`"))?;
        let mut text = String::new();
        match content {
            Value::String(s) => text.push_str(s),
            Value::Array(parts) => {
                for (k, part) in parts.iter().enumerate() {
                    let at = format!("{at}.content[{k}]");
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => text.push_str(
                            part.get("text")
                                .and_then(Value::as_str)
                                .ok_or(format!("{at}: a text part without `text`"))?,
                        ),
                        Some("image_url") => {
                            let url = part.get("image_url").and_then(url_of).ok_or(format!(
                                "{at}: an image_url part without `image_url.url`"
                            ))?;
                            let p = media.path_of(url, policy, &at)?;
                            media.push(Media::Image(p), policy)?;
                            text.push_str("<image>");
                        }
                        Some("video") => {
                            let frames = part
                                .get("frames")
                                .and_then(Value::as_array)
                                .filter(|f| !f.is_empty())
                                .ok_or(format!(
                                    "{at}: a video part needs `frames`, a list of image URLs"
                                ))?;
                            let mut paths = Vec::with_capacity(frames.len());
                            for (j, f) in frames.iter().enumerate() {
                                let url =
                                    url_of(f).ok_or(format!("{at}.frames[{j}]: not a URL"))?;
                                paths.push(media.path_of(
                                    url,
                                    policy,
                                    &format!("{at}.frames[{j}]"),
                                )?);
                            }
                            media.push(Media::Video(paths), policy)?;
                            text.push_str("<image>");
                        }
                        Some(t) => return Err(format!("{at}: unknown content part type {t:?}")),
                        None => return Err(format!("{at}: no `type`")),
                    }
                }
            }
            _ => {
                return Err(format!(
                    "{at}: `content` must be a string or a list of parts"
                ))
            }
        }
        turns.push(text);
    }
    Ok((turns.join("<|endofchunk|>"), media))
}

/// `images` of `/v1/completions` (URLs as in chat).
pub fn completion_media(
    images: Option<&Value>,
    policy: &MediaPolicy,
) -> Result<Collected, BadRequest> {
    let mut media = Collected::default();
    let Some(images) = images else {
        return Ok(media);
    };
    let list = images
        .as_array()
        .ok_or("`images` must be a list of image URLs")?;
    for (i, v) in list.iter().enumerate() {
        let at = format!("images[{i}]");
        let url = url_of(v).ok_or(format!("{at}: not a URL"))?;
        let p = media.path_of(url, policy, &at)?;
        media.push(Media::Image(p), policy)?;
    }
    Ok(media)
}

/// The generation settings of a body; `max_tokens` is bounded by `cap`.
pub struct Sampling {
    pub options: GenerateOptions,
    pub n: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub logprobs: Option<usize>,
    /// Completions: the prompt comes back before the completion (with
    /// its tokens' logprobs when asked).
    pub echo: bool,
}

fn num<T: TryFrom<u64>>(body: &Value, key: &str) -> Result<Option<T>, BadRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| T::try_from(x).ok())
            .map(Some)
            .ok_or(format!("`{key}` must be a non-negative integer")),
    }
}

fn float(body: &Value, key: &str) -> Result<Option<f32>, BadRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|x| Some(x as f32))
            .ok_or(format!("`{key}` must be a number")),
    }
}

/// The fields OpenAI defines that change generation, and the Flamingo
/// extension `num_beams`; unknown fields are ignored as OpenAI's servers
/// ignore them.
pub fn sampling(
    body: &Value,
    max_tokens_cap: usize,
    default_tokens: usize,
) -> Result<Sampling, BadRequest> {
    let mut o = GenerateOptions::default();
    let max_tokens = num::<usize>(body, "max_completion_tokens")?
        .or(num::<usize>(body, "max_tokens")?)
        .unwrap_or(default_tokens.min(max_tokens_cap));
    let echo = match body.get("echo") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        _ => return Err("`echo` must be true or false".into()),
    };
    // with echo, 0 new tokens scores the prompt alone
    if (max_tokens == 0 && !echo) || max_tokens > max_tokens_cap {
        return Err(format!(
            "`max_tokens` must be between 1 and {max_tokens_cap} (--max-tokens)"
        ));
    }
    o.max_new_tokens = max_tokens;
    let temperature = float(body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err("`temperature` must be between 0 and 2".into());
    }
    let top_p = float(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err("`top_p` must be in (0, 1]".into());
    }
    // OpenAI samples unless the temperature is 0; greedy when asked so
    o.do_sample = temperature > 0.0 && body.get("temperature").is_some_and(|t| !t.is_null());
    o.temperature = if o.do_sample { temperature } else { 1.0 };
    o.top_p = top_p;
    o.top_k = 0;
    if top_p < 1.0 && body.get("temperature").is_none() {
        o.do_sample = true;
    }
    o.seed = num::<u64>(body, "seed")?.unwrap_or(0);
    o.num_beams = num::<usize>(body, "num_beams")?.unwrap_or(1).max(1);
    let n = num::<usize>(body, "n")?.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err("`n` must be between 1 and 16".into());
    }
    if o.num_beams > 1 {
        if n > o.num_beams {
            return Err("`n` must be at most `num_beams`".into());
        }
        o.num_return_sequences = n;
        o.do_sample = false;
    }
    // chat: `logprobs: true` and `top_logprobs`; completions: `logprobs: k`
    let logprobs = match body.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(num::<usize>(body, "top_logprobs")?.unwrap_or(0)),
        Some(Value::Number(_)) => Some(num::<usize>(body, "logprobs")?.unwrap_or(0)),
        _ => return Err("`logprobs` must be true, false or a count".into()),
    };
    if logprobs.is_some_and(|k| k > 20) {
        return Err("`top_logprobs` must be between 0 and 20".into());
    }
    if echo && (o.num_beams > 1 || n > 1) {
        return Err("`echo` takes one greedy or sampled choice".into());
    }
    if logprobs.is_some() && o.num_beams > 1 {
        return Err("`logprobs` are not reported for beam search".into());
    }
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from).ok_or("`stop` must be strings"))
            .collect::<Result<_, _>>()?,
        _ => return Err("`stop` must be a string or a list of strings".into()),
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err("`stop` takes up to 4 non-empty strings".into());
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        _ => return Err("`stream` must be true or false".into()),
    };
    if echo && stream {
        return Err("`echo` is not streamed; ask without `stream`".into());
    }
    if o.max_new_tokens > 0 {
        o.validate()?;
    }
    Ok(Sampling {
        echo,
        options: o,
        n,
        stop,
        stream,
        logprobs,
    })
}

/// `message` with the scratch paths of `labels` replaced by what they are
/// in the request.
pub fn relabel(message: &str, labels: &[(String, String)]) -> String {
    labels
        .iter()
        .fold(message.to_string(), |m, (path, what)| m.replace(path, what))
}
