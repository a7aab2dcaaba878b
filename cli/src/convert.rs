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
    let src = flamingo_export::Manifest::load(&a.input)?;
    if src.precision != "fp32" {
        bail!(
            "{} is already {}; convert from an fp32 export",
            a.input.display(),
            src.precision
        );
    }
    let mut bars = crate::progress::Bars::new(!a.json && std::io::stderr().is_terminal());
    let m = flamingo_calibration::convert::convert(
        &a.input,
        &a.out,
        a.force,
        "fp16",
        &|_, g| flamingo_calibration::fp16::to_fp16(g).map(Some),
        &mut bars,
    )?;
    if a.json {
        println!("{}", m.to_json());
    } else {
        println!(
            "converted {} to {} ({})",
            a.input.display(),
            a.out.display(),
            m.precision
        );
    }
    Ok(())
}
