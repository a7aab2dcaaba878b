//! `flamingo encode`

use std::path::PathBuf;

use anyhow::{Context, Result};
use flamingo_export::safetensors::{write_f32, Named};
use flamingo_runtime::{BackendKind, Media, Model};

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
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let media = media_in_order(&a)?;
    let mut model = Model::load(&a.model, a.backend)?;
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

/// Media in command-line order: clap keeps each flag's values, so we restore
/// the interleaving of --image and --video from the raw arguments.
fn media_in_order(a: &Args) -> Result<Vec<Media>> {
    let mut images = a.image.iter();
    let mut videos = a.video.iter();
    let mut out = Vec::new();
    let args: Vec<String> = std::env::args().collect();
    for arg in &args {
        let flag = arg.split('=').next().unwrap_or("");
        if flag == "--image" {
            if let Some(p) = images.next() {
                out.push(Media::Image(p.clone()));
            }
        } else if flag == "--video" {
            if let Some(v) = videos.next() {
                let frames: Vec<PathBuf> = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect();
                out.push(Media::Video(frames));
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("give at least one --image or --video");
    }
    Ok(out)
}
