//! `flamingo quantize`: weight-only int8 / int4 quantisation of an fp32 export.

use std::path::PathBuf;

use anyhow::{bail, Result};
use flamingo_calibration::weights::{quantize_weights, WeightBits};

#[derive(clap::Args)]
pub struct Args {
    /// int8 (DequantizeLinear, portable) or int4 (MatMulNBits, ONNX Runtime only)
    #[arg(long)]
    weights: String,
    /// int4 block size along K
    #[arg(long, default_value_t = 32)]
    block_size: usize,
    /// Also quantise the vision encoder, resampler and media K/V projections (default: the decoder only)
    #[arg(long)]
    include_vision: bool,
    /// The fp32 export to quantise
    input: PathBuf,
    /// Output directory
    out: PathBuf,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let bits = match a.weights.as_str() {
        "int8" => WeightBits::Int8,
        "int4" => WeightBits::Int4 {
            block_size: a.block_size,
        },
        other => bail!("--weights {other}: expected int8 or int4"),
    };
    let vision = a.include_vision;
    crate::convert::rewrite_export(
        &a.input,
        &a.out,
        a.force,
        a.json,
        bits.name(),
        "quantised",
        &|role, g| {
            if vision || role == "decoder" {
                quantize_weights(g, bits).map(Some)
            } else {
                Ok(None)
            }
        },
    )
}
