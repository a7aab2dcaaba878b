//! `flamingo convert`: rewrite an fp32 export's precision.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Target precision: fp16 (float16 with float32 islands), or fp32-ort
    /// (float32 with ONNX Runtime's fused kernels in the decoder:
    /// GroupQueryAttention updating the KV cache in place, MultiHeadAttention
    /// over the media K/V, Gelu, SkipLayerNormalization; ONNX Runtime only,
    /// the fastest fp32 decode and serving on its CPU provider)
    #[arg(long)]
    precision: String,
    /// fp32-ort: self-attention over a concatenated KV cache
    /// (MultiHeadAttention) instead of GroupQueryAttention updating it in
    /// place; for the CUDA provider, which has no float32
    /// GroupQueryAttention
    #[arg(long)]
    plain_kv_cache: bool,
    /// The fp32 export to convert
    input: PathBuf,
    /// Output directory
    out: PathBuf,
    /// Replace the output directory if it exists
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.precision.as_str() {
        "fp16" if a.plain_kv_cache => bail!("--plain-kv-cache is for --precision fp32-ort"),
        "fp16" => {}
        "fp32-ort" => return fuse(a),
        other => bail!("unknown --precision {other} (fp16 or fp32-ort)"),
    }
    rewrite_export(
        &a.input,
        &a.out,
        a.force,
        a.json,
        flamingo_contract::Precision::Fp16,
        "converted",
        &|_, g| flamingo_calibration::fp16::to_fp16(g).map(Some),
    )
}

/// `--precision fp32-ort`: the decoder fused for ONNX Runtime.
fn fuse(a: Args) -> Result<()> {
    let mut bars = crate::progress::Bars::new(!a.json && std::io::stderr().is_terminal());
    let (m, n) = flamingo_calibration::ort_fuse::fuse_export(
        &a.input,
        &a.out,
        a.force,
        !a.plain_kv_cache,
        &mut bars,
    )?;
    report(&a.input, &a.out, a.json, "converted", &m);
    if !a.json {
        let kv = match m
            .graphs
            .get(&flamingo_contract::GraphRole::Decoder)
            .and_then(|g| g.kv_update)
        {
            Some(flamingo_contract::KvUpdate::InPlace) => "updated in place",
            None => "concatenated",
        };
        println!(
            "decoder: {} self-attention (KV cache {kv}), {} cross-attention, {} GELU, {} skip-LayerNorm fused",
            n.self_attention, n.cross_attention, n.gelu, n.skip_layer_norm
        );
    }
    Ok(())
}

/// Rewrites the fp32 export `input` into `out` (`convert`), with
/// progress, printing the manifest or a line.
pub fn rewrite_export(
    input: &std::path::Path,
    out: &std::path::Path,
    force: bool,
    json: bool,
    precision: flamingo_contract::Precision,
    verb: &str,
    rewrite: flamingo_calibration::convert::RoleRewrite,
) -> Result<()> {
    let mut bars = crate::progress::Bars::new(!json && std::io::stderr().is_terminal());
    let m = flamingo_calibration::convert::convert_fp32(
        input, out, force, precision, rewrite, &mut bars,
    )?;
    report(input, out, json, verb, &m);
    Ok(())
}

/// Prints the manifest of a rewritten export (`--json`) or one line.
pub fn report(
    input: &std::path::Path,
    out: &std::path::Path,
    json: bool,
    verb: &str,
    m: &flamingo_contract::Manifest,
) {
    if json {
        println!("{}", m.to_json());
    } else {
        println!(
            "{verb} {} to {} ({})",
            input.display(),
            out.display(),
            m.precision
        );
    }
}
