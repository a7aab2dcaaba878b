//! `flamingo export`

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// open_clip vision weights (open_clip_pytorch_model.bin or .safetensors)
    #[arg(long, required_unless_present = "preset")]
    clip: Option<PathBuf>,
    /// Vision tower preset when no open_clip_config.json sits beside --clip (e.g. ViT-L-14)
    #[arg(long)]
    vision_preset: Option<String>,
    /// Hugging Face language-model directory (config.json + weights)
    #[arg(long, required_unless_present = "preset")]
    lm: Option<PathBuf>,
    /// OpenFlamingo checkpoint.pt (perceiver, cross-attention layers, embeddings)
    #[arg(long, required_unless_present = "preset")]
    checkpoint: Option<PathBuf>,
    /// Tokenizer directory (tokenizer.json)
    #[arg(long, required_unless_present = "preset")]
    tokenizer: Option<PathBuf>,
    /// Gated cross-attention before every n-th decoder layer (releases: 1, 2 or 4)
    #[arg(long, required_unless_present = "preset")]
    cross_attn_every_n_layers: Option<usize>,
    /// Export an official shape instead of a release: of-mini, of-3b, of-4b, of-9b
    #[arg(long, requires = "random_weights", conflicts_with_all = ["clip", "lm", "checkpoint", "tokenizer"])]
    preset: Option<String>,
    /// With --preset: fill the weights with seeded random values (for benchmarks)
    #[arg(long)]
    random_weights: bool,
    /// Output directory
    #[arg(long)]
    out: PathBuf,
    /// Replace the output directory if it exists
    #[arg(long)]
    force: bool,
    /// Graph precision: fp32, or fp16 (float16 with float32 islands)
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Print the manifest as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let rewrite = match a.precision.as_str() {
        "fp32" => None,
        "fp16" => Some((
            flamingo_contract::Precision::Fp16,
            flamingo_calibration::fp16::to_fp16 as flamingo_export::Rewrite,
        )),
        other => anyhow::bail!("unknown --precision {other} (fp32 or fp16)"),
    };
    let mut bars = crate::progress::Bars::new(!a.json && std::io::stderr().is_terminal());
    let m = if let Some(p) = &a.preset {
        flamingo_export::export_preset(p, &a.out, a.force, rewrite, &mut bars)?
    } else {
        let need = |v: Option<PathBuf>, flag: &str| {
            v.ok_or_else(|| anyhow::anyhow!("--{flag} is required"))
        };
        let opts = flamingo_export::ExportOptions {
            clip: need(a.clip, "clip")?,
            vision_preset: a.vision_preset,
            lm: need(a.lm, "lm")?,
            checkpoint: need(a.checkpoint, "checkpoint")?,
            tokenizer: need(a.tokenizer, "tokenizer")?,
            cross_attn_every_n_layers: a
                .cross_attn_every_n_layers
                .ok_or_else(|| anyhow::anyhow!("--cross-attn-every-n-layers is required"))?,
            out: a.out.clone(),
            force: a.force,
            rewrite,
        };
        flamingo_export::export(&opts, &mut bars)?
    };
    if a.json {
        println!("{}", m.to_json());
    } else {
        println!(
            "exported {} ({} graphs) to {}",
            m.model.family,
            m.graphs.len(),
            a.out.display()
        );
    }
    Ok(())
}
