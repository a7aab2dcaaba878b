//! `flamingo generate`: one prompt, or a JSONL batch of requests.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flamingo_runtime::{BackendKind, GenerateOptions, Generation, Pipeline, Request};
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
    /// Batch requests run together at most (a batch file streams through
    /// in chunks of this many lines: memory does not grow with its length)
    #[arg(long, default_value_t = 16)]
    batch_chunk: usize,
    #[command(flatten)]
    gpu: crate::gpu::GpuArgs,
    #[command(flatten)]
    load: crate::load::LoadArgs,
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
    let mut p = a.load.pipeline(&a.model, a.backend, &a.gpu)?;
    let defaults = a.options(&p)?;
    if let Some(batch) = &a.batch {
        return run_batch(&mut p, batch, &defaults, a.json, a.batch_chunk.max(1));
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

pub use flamingo_runtime::pipeline::jsonl::read_requests;
use flamingo_runtime::pipeline::jsonl::{parse_request, Lines};

/// A JSONL batch, streamed: `chunk` requests at a time run as one batch and
/// are printed in order before the next lines are read.
fn run_batch(
    p: &mut Pipeline,
    path: &Path,
    defaults: &GenerateOptions,
    json: bool,
    chunk: usize,
) -> Result<()> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let (mut failed, mut seen, mut first) = (0, 0, None);
    let mut pending: Vec<(usize, Result<Request, String>)> = Vec::with_capacity(chunk);
    let mut lines = Lines::open(path)?;
    loop {
        let next = lines.next().transpose()?;
        if let Some((i, line)) = next.clone() {
            pending.push((i, line.and_then(|l| parse_request(&l, &base, defaults))));
            seen += 1;
        }
        if pending.len() >= chunk || (next.is_none() && !pending.is_empty()) {
            let (n, e) = flush(p, path, std::mem::take(&mut pending), json);
            failed += n;
            first = first.or(e);
        }
        if next.is_none() {
            break;
        }
    }
    if seen == 0 {
        bail!("{}: no requests", path.display());
    }
    if failed > 0 {
        bail!(
            "{failed} request(s) failed; the first: {}",
            first.unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs the parsed lines as one batch and prints each result; the number
/// of failures and the first failure's message.
fn flush(
    p: &mut Pipeline,
    path: &Path,
    parsed: Vec<(usize, Result<Request, String>)>,
    json: bool,
) -> (usize, Option<String>) {
    let valid: Vec<Request> = parsed
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let mut results = p.generate_batch(&valid).into_iter();
    let (mut failed, mut first) = (0, None);
    for (line, r) in parsed {
        let out = match r {
            Err(e) => Err(e),
            Ok(_) => results
                .next()
                .unwrap_or_else(|| Err(flamingo_runtime::Error::Input("missing result".into())))
                .map_err(|e| e.to_string()),
        };
        let out = out.map_err(|e| format!("{}:{line}: {e}", path.display()));
        if let Err(e) = &out {
            failed += 1;
            first = first.or_else(|| Some(e.clone()));
        }
        match (out, json) {
            (Ok(g), true) => println!("{}", to_json(&g)),
            (Ok(g), false) => println!(
                "{line}: {}",
                g.sequences.first().map(|s| s.text.as_str()).unwrap_or("")
            ),
            (Err(e), true) => println!("{}", json!({"line": line, "error": e})),
            (Err(e), false) => println!("{line}: error: {e}"),
        }
    }
    let _ = std::io::stdout().flush();
    (failed, first)
}
