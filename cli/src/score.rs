//! `flamingo score`: close-ended scoring of candidate continuations.

use std::path::PathBuf;

use anyhow::Result;
use flamingo_runtime::BackendKind;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// Prompt with one `<image>` marker per media item
    #[arg(long)]
    prompt: String,
    /// An image (repeatable; order is the media order)
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A video as comma-separated frame paths (repeatable)
    #[arg(long)]
    video: Vec<String>,
    /// A candidate continuation (repeatable)
    #[arg(long, required = true)]
    candidate: Vec<String>,
    /// Backend: tract (default), ort-cpu, ort-cuda, ort-tensorrt
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    load: crate::load::LoadArgs,
}

pub fn run(a: Args) -> Result<()> {
    let mut p = a.load.pipeline(&a.model, a.backend, &Default::default())?;
    let media = crate::media::in_order(&a.image, &a.video);
    let scores = p.score(&a.prompt, &media, &a.candidate)?;
    let best = scores
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.logprob_sum.total_cmp(&y.1.logprob_sum))
        .map(|(i, _)| i)
        .unwrap_or(0);
    if a.json {
        println!("{}", json!({"candidates": scores, "best": best}));
    } else {
        for (i, s) in scores.iter().enumerate() {
            let mark = if i == best { "*" } else { " " };
            println!(
                "{mark} {:>12.4}  ({} tokens)  {:?}",
                s.logprob_sum, s.num_tokens, s.text
            );
        }
    }
    Ok(())
}
