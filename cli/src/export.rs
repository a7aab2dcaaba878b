//! `flamingo export`

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Vision weights: open_clip's open_clip_pytorch_model.bin / .safetensors,
    /// or OpenAI's TorchScript ViT-L-14.pt (a directory holding one works)
    #[arg(long, required_unless_present = "preset")]
    clip: Option<PathBuf>,
    /// Vision tower preset when no open_clip_config.json sits beside --clip (e.g. ViT-L-14)
    #[arg(long)]
    vision_preset: Option<String>,
    /// Hugging Face language-model directory (config.json + weights)
    #[arg(long, required_unless_present = "preset")]
    lm: Option<PathBuf>,
    /// OpenFlamingo checkpoint.pt (perceiver, cross-attention layers,
    /// embeddings), or a directory holding it
    #[arg(long, required_unless_present = "preset")]
    checkpoint: Option<PathBuf>,
    /// Tokenizer directory (tokenizer.json) [default: --lm, the LM repo's
    /// own, with OpenFlamingo's <|endofchunk|>, <image> and <PAD> added as
    /// open_flamingo adds them]
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Gated cross-attention before every n-th decoder layer (releases: 1, 2
    /// or 4) [default: read from the layers checkpoint.pt holds]
    #[arg(long)]
    cross_attn_every_n_layers: Option<usize>,
    /// A public release whose shapes and settings the files must have:
    /// openflamingo-3b-vitl-mpt1b, openflamingo-3b-vitl-mpt1b-langinstruct,
    /// openflamingo-4b-vitl-rpj3b, openflamingo-4b-vitl-rpj3b-langinstruct,
    /// openflamingo-9b-vitl-mpt7b
    #[arg(long, conflicts_with = "preset")]
    release: Option<String>,
    /// Refuse checkpoint pickles nesting containers deeper than this
    #[arg(long, default_value_t = 1000)]
    max_pickle_depth: u32,
    /// Refuse checkpoint pickles of more values than this
    #[arg(long, default_value_t = 50_000_000)]
    max_pickle_objects: u64,
    /// Export an official shape with random weights instead of a release:
    /// of-mini, or of-3b, of-4b, of-9b (the releases' architectures)
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
            tokenizer: a.tokenizer,
            cross_attn_every_n_layers: a.cross_attn_every_n_layers,
            out: a.out.clone(),
            force: a.force,
            release: a.release,
            pickle_limits: flamingo_export::pickle::PickleLimits {
                max_depth: a.max_pickle_depth,
                max_objects: a.max_pickle_objects,
            },
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
