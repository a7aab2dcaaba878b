//! `flamingo compare`: judge a precision variant against a reference export.

use std::path::PathBuf;

use anyhow::{bail, Result};
use flamingo_runtime::{BackendKind, GenerateOptions, Pipeline};

#[derive(clap::Args)]
pub struct Args {
    /// Two export directories: the reference, then the candidate
    #[arg(long = "model", num_args = 1, required = true)]
    models: Vec<PathBuf>,
    /// Requests, in the `flamingo generate --batch` JSONL format
    #[arg(long)]
    data: PathBuf,
    /// Backend for the reference
    #[arg(long, default_value = "ort-cpu")]
    backend: BackendKind,
    /// Backend for the candidate (default: --backend)
    #[arg(long)]
    backend_b: Option<BackendKind>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gpu: crate::gpu::GpuArgs,
}

pub fn run(a: Args) -> Result<()> {
    let [ma, mb] = &a.models[..] else {
        bail!("give exactly two --model directories (reference, candidate)");
    };
    let defaults = GenerateOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let reqs = crate::generate::read_requests(&a.data, &defaults, None)?;
    if reqs.is_empty() {
        bail!("{}: no requests", a.data.display());
    }
    let mut pa = Pipeline::load_with_gpu(ma, a.backend, &a.gpu.options())?;
    let mut pb = Pipeline::load_with_gpu(mb, a.backend_b.unwrap_or(a.backend), &a.gpu.options())?;
    let r = flamingo_calibration::compare::compare(&mut pa, &mut pb, &reqs)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} requests: {} vs {}",
            r.requests,
            ma.display(),
            mb.display()
        );
        for (name, g) in [
            ("vision_tokens", &r.vision_tokens),
            ("latents", &r.latents),
            ("media_kv", &r.media_kv),
            ("logits", &r.logits),
        ] {
            println!(
                "  {name:<14} cosine min {:.6} mean {:.6}  max abs {:.3e}",
                g.cosine_min, g.cosine_mean, g.max_abs
            );
        }
        println!(
            "  top-1 agreement {:.4}, greedy sequence match rate {:.4}",
            r.top1_agreement, r.greedy_match_rate
        );
    }
    Ok(())
}
