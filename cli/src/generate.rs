//! `flamingo generate`: one prompt, or a JSONL batch of requests.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flamingo_runtime::pipeline::resolve;
use flamingo_runtime::{BackendKind, GenerateOptions, Generation, Media, Pipeline, Request};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// Prompt with one `<image>` marker per media item
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    prompt: Option<String>,
    /// An image (repeatable; order is the media order)
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A video as comma-separated frame paths (repeatable)
    #[arg(long)]
    video: Vec<String>,
    /// JSONL file, one request per line: {"prompt", "media": ["a.png", ["f1.png", "f2.png"]], "max_new_tokens", ...}
    #[arg(long)]
    batch: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    #[arg(long)]
    do_sample: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Top-k when sampling (transformers' default 50; 0 disables)
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    #[arg(long)]
    early_stopping: bool,
    #[arg(long, default_value_t = 1)]
    num_return_sequences: usize,
    /// Stop token (repeatable; default `<|endofchunk|>`)
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Backend: tract (default), ort-cpu, ort-cuda, ort-tensorrt
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// One JSON object per request on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gpu: crate::gpu::GpuArgs,
}

impl Args {
    fn options(&self, p: &Pipeline) -> Result<GenerateOptions> {
        let mut stop_tokens = Vec::new();
        for s in &self.stop {
            let id = p
                .tokenizer
                .token_id(s)
                .with_context(|| format!("--stop {s:?} is not a single token of this tokenizer"))?;
            stop_tokens.push(id);
        }
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            num_beams: self.num_beams,
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            num_return_sequences: self.num_return_sequences,
            seed: self.seed,
            stop_tokens,
        })
    }
}

/// The `--json` object of one generation.
pub fn to_json(g: &Generation) -> Value {
    let first = g.sequences.first();
    json!({
        "prompt_ids": g.prompt_ids,
        "generated_ids": first.map(|s| s.generated_ids.clone()).unwrap_or_default(),
        "text": first.map(|s| s.text.clone()).unwrap_or_default(),
        "sequences": g.sequences,
    })
}

pub fn run(a: Args) -> Result<()> {
    let mut p = Pipeline::load_with_gpu(&a.model, a.backend, &a.gpu.options())?;
    let defaults = a.options(&p)?;
    if let Some(batch) = &a.batch {
        return run_batch(&mut p, batch, &defaults, a.json);
    }
    let req = Request {
        prompt: a.prompt.clone().unwrap_or_default(),
        media: crate::media::in_order(&a.image, &a.video),
        options: defaults,
    };
    if a.json {
        let g = p.generate(&req)?;
        println!("{}", to_json(&g));
        return Ok(());
    }
    let mut out = std::io::stdout();
    let streaming = req.options.num_beams == 1;
    let g = p.generate_stream(&req, &mut |e| {
        if streaming {
            let _ = write!(out, "{}", e.text);
            let _ = out.flush();
        }
        true
    })?;
    if streaming {
        println!();
    } else {
        for s in &g.sequences {
            println!("{}", s.text);
        }
    }
    Ok(())
}

/// One request from a JSONL line; media paths resolve against `base`.
pub fn parse_request(
    line: &str,
    base: &Path,
    defaults: &GenerateOptions,
) -> Result<Request, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("a request must be a JSON object")?;
    let prompt = obj
        .get("prompt")
        .and_then(|p| p.as_str())
        .ok_or("missing \"prompt\" (a string)")?
        .to_string();
    let mut media = Vec::new();
    for (i, m) in obj
        .get("media")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match m {
            Value::String(s) => media.push(Media::Image(resolve(base, s))),
            Value::Array(frames) => {
                let fr: Option<Vec<PathBuf>> = frames
                    .iter()
                    .map(|f| f.as_str().map(|s| resolve(base, s)))
                    .collect();
                media.push(Media::Video(
                    fr.ok_or(format!("media[{i}]: video frames must be strings"))?,
                ));
            }
            _ => {
                return Err(format!(
                    "media[{i}] must be a path or a list of frame paths"
                ))
            }
        }
    }
    // per-request options override the command line's
    let mut opts = serde_json::to_value(defaults).map_err(|e| e.to_string())?;
    for (k, val) in obj {
        if k != "prompt" && k != "media" {
            if opts.get(k).is_none() {
                return Err(format!("unknown field \"{k}\""));
            }
            opts[k] = val.clone();
        }
    }
    let options: GenerateOptions =
        serde_json::from_value(opts).map_err(|e| format!("bad option: {e}"))?;
    Ok(Request {
        prompt,
        media,
        options,
    })
}

/// Every request of a JSONL file (blank lines skipped); the first bad line is
/// an error naming the file and line.
pub fn read_requests(path: &Path, defaults: &GenerateOptions) -> Result<Vec<Request>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reqs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let r = parse_request(line, &base, defaults)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        reqs.push(r);
    }
    Ok(reqs)
}

fn run_batch(p: &mut Pipeline, path: &Path, defaults: &GenerateOptions, json: bool) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut parsed = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        parsed.push((i + 1, parse_request(&line, &base, defaults)));
    }
    if parsed.is_empty() {
        bail!("{}: no requests", path.display());
    }
    let valid: Vec<Request> = parsed
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let mut results = p.generate_batch(&valid).into_iter();
    let mut failed = 0;
    for (line, r) in parsed {
        let out = match r {
            Err(e) => Err(e),
            Ok(_) => results
                .next()
                .unwrap_or_else(|| Err(flamingo_runtime::Error::Input("missing result".into())))
                .map_err(|e| e.to_string()),
        };
        match (out, json) {
            (Ok(g), true) => println!("{}", to_json(&g)),
            (Ok(g), false) => println!(
                "{line}: {}",
                g.sequences.first().map(|s| s.text.as_str()).unwrap_or("")
            ),
            (Err(e), true) => {
                failed += 1;
                println!(
                    "{}",
                    json!({"line": line, "error": format!("{}:{line}: {e}", path.display())})
                )
            }
            (Err(e), false) => {
                failed += 1;
                println!("{line}: error: {}:{line}: {e}", path.display())
            }
        }
    }
    if failed > 0 {
        bail!("{failed} request(s) failed");
    }
    Ok(())
}
