//! `flamingo quantize`: weight-only int8 / int4 quantisation of an fp32 export.

use std::path::PathBuf;

use std::io::IsTerminal;

use anyhow::Result;
use flamingo_calibration::weights::{
    quantize_export, BlockOptions, QuantizeSpec, WeightBits, WeightKind,
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
    /// decode on AVX2 CPUs; flamingo's ort-cpu backend only), or
    /// int8-dynamic (int8 compute: per-channel int8 weights and activations
    /// quantised per tensor at run time in ONNX Runtime's
    /// DynamicQuantizeMatMul; with --include-vision the fastest time to
    /// first token, on CPUs with VNNI or AMX most of all; ONNX Runtime only)
    #[arg(long, value_enum)]
    weights: WeightKind,
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
    let bits = WeightBits::new(a.weights, a.block_size).map_err(anyhow::Error::msg)?;
    let spec = QuantizeSpec {
        bits,
        opts: BlockOptions {
            symmetric: a.symmetric,
            head_bits: a.head_bits,
            plain_kv_cache: a.plain_kv_cache,
        },
        include_vision: a.include_vision,
    };
    // refused before the calibration passes
    bits.check(&spec.opts, a.data.is_some())
        .map_err(anyhow::Error::msg)?;
    let hessians = match &a.data {
        None => None,
        Some(data) => Some(observe(&a, data)?),
    };
    let mut bars = crate::progress::Bars::new(!a.json && std::io::stderr().is_terminal());
    let m = quantize_export(
        &a.input,
        &a.out,
        a.force,
        &spec,
        hessians.as_ref(),
        &mut bars,
    )?;
    let verb = if hessians.is_some() {
        "quantised (GPTQ)"
    } else {
        "quantised"
    };
    crate::convert::report(&a.input, &a.out, a.json, verb, &m);
    Ok(())
}

/// The decoder's Hessians over the calibration requests, with a progress bar.
fn observe(a: &Args, data: &std::path::Path) -> Result<flamingo_calibration::gptq::Hessians> {
    let reqs =
        crate::progress::calibration_requests(&a.input, &a.out, a.force, data, a.samples, 8)?;
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
