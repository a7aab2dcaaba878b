//! `flamingo convert`: rewrite an fp32 export's precision.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Target precision: fp16 (float16 with float32 islands)
    #[arg(long)]
    precision: String,
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
    if a.precision != "fp16" {
        bail!("unknown --precision {} (fp16)", a.precision);
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
