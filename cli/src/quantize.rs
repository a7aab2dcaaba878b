//! `flamingo quantize`: weight-only int8 / int4 quantisation of an fp32 export.

use std::path::PathBuf;

use std::io::IsTerminal;

use anyhow::{bail, Result};
use flamingo_calibration::weights::{
    quantize_decoder, quantize_weights_opts, BlockOptions, WeightBits,
};
use flamingo_runtime::BackendKind;

#[derive(clap::Args)]
pub struct Args {
    /// int8 (DequantizeLinear, portable), int8-ort (MatMulNBits, 8 bits:
    /// ONNX Runtime only, its int8 kernels), int8-flamingo (per-channel int8
    /// in this runtime's own kernel inside ONNX Runtime: float32 compute, the
    /// fastest int8 decode on AVX2 CPUs; runs only through flamingo's
    /// ort-cpu backend), int4 (MatMulNBits, 4 bits, ONNX Runtime only) or
    /// int4-flamingo (symmetric int4 blocks in this runtime's own kernel
    /// inside ONNX Runtime, int8 activations per 32 as int4's: the fastest
    /// decode on AVX2 CPUs; flamingo's ort-cpu backend only)
    #[arg(long)]
    weights: String,
    /// Block size along K (int8-ort, int4, int4-flamingo) [default: 32]
    #[arg(long)]
    block_size: Option<usize>,
    /// int8-ort, int4: symmetric blocks (no zero points). Faster kernels and
    /// fewer bytes, coarser; with `--block-size 128 --head-bits 4` the
    /// fastest setting
    #[arg(long)]
    symmetric: bool,
    /// int8-ort, int4, int4-flamingo: bits of the LM head, 8 or 4
    #[arg(long, default_value_t = 8)]
    head_bits: u32,
    /// int8-ort, int8-flamingo, int4, int4-flamingo: self-attention over a concatenated KV cache
    /// (MultiHeadAttention) instead of GroupQueryAttention updating it in
    /// place; for the CUDA provider, which has no float32
    /// GroupQueryAttention
    #[arg(long)]
    plain_kv_cache: bool,
    /// Also quantise the vision encoder, resampler and media K/V projections (default: the decoder only)
    #[arg(long)]
    include_vision: bool,
    /// int4, int8-ort, int8-flamingo, int4-flamingo: calibration requests (the `flamingo generate --batch` JSONL
    /// format) for GPTQ, which spreads each weight's rounding error over the
    /// weights not yet quantised, weighted by the activations on this data.
    /// Without it, weights are rounded to nearest.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use at most this many calibration requests
    #[arg(long)]
    samples: Option<usize>,
    /// Backend that runs the fp32 graphs on the calibration data
    #[arg(long, default_value = "ort-cpu")]
    backend: BackendKind,
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
    let block_size = a.block_size.unwrap_or(32);
    let bits = match a.weights.as_str() {
        "int8" => WeightBits::Int8,
        "int8-ort" => WeightBits::Int8Ort { block_size },
        "int4" => WeightBits::Int4 { block_size },
        "int8-flamingo" => WeightBits::Int8Flamingo,
        "int4-flamingo" => WeightBits::Int4Flamingo { block_size },
        other => bail!(
            "--weights {other}: expected int8, int8-ort, int8-flamingo, int4 or int4-flamingo"
        ),
    };
    if a.block_size.is_some() && matches!(bits, WeightBits::Int8 | WeightBits::Int8Flamingo) {
        bail!(
            "--block-size applies to --weights int8-ort, int4 and int4-flamingo; {} is per channel",
            a.weights
        );
    }
    let unit = flamingo_runtime::int4_matmul::BLOCK;
    if matches!(bits, WeightBits::Int4Flamingo { .. })
        && (block_size < unit || !block_size.is_power_of_two())
    {
        bail!(
            "--block-size {block_size}: int4-flamingo's blocks are a power of two, at least {unit}"
        );
    }
    if matches!(bits, WeightBits::Int4Flamingo { .. }) && a.symmetric {
        bail!("--symmetric applies to --weights int8-ort and int4; int4-flamingo is symmetric");
    }
    let vision = a.include_vision;
    let opts = BlockOptions {
        symmetric: a.symmetric,
        head_bits: a.head_bits,
        plain_kv_cache: a.plain_kv_cache,
    };
    if bits == WeightBits::Int8 && (a.symmetric || a.head_bits != 8 || a.plain_kv_cache) {
        bail!("--symmetric, --head-bits and --plain-kv-cache apply to --weights int8-ort and int4");
    }
    if bits == WeightBits::Int8Flamingo && (a.symmetric || a.head_bits != 8) {
        bail!(
            "--symmetric and --head-bits apply to --weights int8-ort and int4; int8-flamingo \
             is symmetric per channel, the head included"
        );
    }
    if ![4, 8].contains(&a.head_bits) {
        bail!("--head-bits {}: expected 4 or 8", a.head_bits);
    }
    let hessians = match &a.data {
        None => None,
        Some(_) if bits == WeightBits::Int8 => {
            bail!(
                "--data (GPTQ) applies to --weights int4, int8-ort and int8-flamingo; int8 rounds \
                 per channel"
            )
        }
        Some(data) => Some(observe(&a, data)?),
    };
    let gptq = hessians.is_some();
    crate::convert::rewrite_export(
        &a.input,
        &a.out,
        a.force,
        a.json,
        bits.name(),
        if gptq {
            "quantised (GPTQ)"
        } else {
            "quantised"
        },
        &|role, g| {
            if vision || role == "decoder" {
                // GPTQ where observed (the decoder), rounding elsewhere
                if role == "decoder" {
                    quantize_decoder(g, bits, hessians.as_ref(), &opts).map(Some)
                } else {
                    quantize_weights_opts(g, bits, None, &opts).map(Some)
                }
            } else {
                Ok(None)
            }
        },
    )
}

/// The decoder's Hessians over the calibration requests, with a progress bar.
fn observe(a: &Args, data: &std::path::Path) -> Result<flamingo_calibration::gptq::Hessians> {
    let reqs = crate::progress::calibration_requests(&a.out, a.force, data, a.samples, 8)?;
    let bar = crate::progress::request_bar(
        !a.json && std::io::stderr().is_terminal(),
        reqs.len(),
        "observing",
    );
    let h = flamingo_calibration::calibrate::hessians(&a.input, &reqs, a.backend, &mut |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish();
    Ok(h)
}
