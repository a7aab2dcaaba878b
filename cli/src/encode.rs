//! `flamingo encode`

use std::path::PathBuf;

use anyhow::{Context, Result};
use flamingo_export::safetensors::{write_f32, Named};
use flamingo_runtime::BackendKind;

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// An image (repeatable; order is the media order)
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A video as comma-separated frame paths (repeatable)
    #[arg(long)]
    video: Vec<String>,
    /// Backend: tract (default, embedded) or ort-cpu
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// Output .safetensors with `vision_tokens` and `latents`
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists (a regular file only)
    #[arg(long)]
    force: bool,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    load: crate::load::LoadArgs,
}

pub fn run(a: Args) -> Result<()> {
    let media = crate::media::in_order(&a.image, &a.video);
    if media.is_empty() {
        anyhow::bail!("give at least one --image or --video");
    }
    crate::load::check_output_file(&a.out, a.force, "--out")?;
    let mut model = a.load.model(&a.model, a.backend, &Default::default())?;
    let enc = model.encode(&media)?;
    let tokens = enc.vision_tokens.as_standard_layout().to_owned();
    let latents = enc.latents.as_standard_layout().to_owned();
    write_f32(
        &a.out,
        &[
            Named {
                name: "vision_tokens",
                shape: tokens.shape(),
                data: tokens
                    .as_slice()
                    .context("vision tokens are not contiguous")?,
            },
            Named {
                name: "latents",
                shape: latents.shape(),
                data: latents.as_slice().context("latents are not contiguous")?,
            },
        ],
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "out": a.out,
                "backend": a.backend.as_str(),
                "vision_tokens": tokens.shape(),
                "latents": latents.shape(),
            })
        );
    } else {
        println!(
            "wrote {} (vision_tokens {:?}, latents {:?}) with {}",
            a.out.display(),
            tokens.shape(),
            latents.shape(),
            a.backend
        );
    }
    Ok(())
}
