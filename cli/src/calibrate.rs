//! `flamingo calibrate`: static int8 calibration of an fp32 export.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};
use flamingo_calibration::observe::Method;
use flamingo_runtime::BackendKind;

#[derive(clap::Args)]
pub struct Args {
    /// The fp32 export to calibrate
    #[arg(long)]
    model: PathBuf,
    /// Calibration requests (the `flamingo generate --batch` JSONL format)
    #[arg(long)]
    data: PathBuf,
    /// entropy (TensorRT's KL), percentile or minmax
    #[arg(long, default_value = "entropy")]
    method: String,
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// Use at most this many requests
    #[arg(long)]
    samples: Option<usize>,
    /// Output directory: int8 QDQ export + calibration/ tables and report
    #[arg(long)]
    out: PathBuf,
    /// Backend that runs the fp32 graphs
    #[arg(long, default_value = "ort-cpu")]
    backend: BackendKind,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let method = match a.method.as_str() {
        "entropy" => Method::Entropy,
        "minmax" => Method::MinMax,
        "percentile" if a.percentile > 0.0 && a.percentile <= 100.0 => {
            Method::Percentile(a.percentile)
        }
        "percentile" => bail!("--percentile must be in (0, 100], got {}", a.percentile),
        other => bail!("--method {other}: expected entropy, percentile or minmax"),
    };
    let reqs =
        crate::progress::calibration_requests(&a.model, &a.out, a.force, &a.data, a.samples, 4)?;
    let show = !a.json && std::io::stderr().is_terminal();
    let bar = crate::progress::request_bar(show, reqs.len(), "observing");
    let ranges =
        flamingo_calibration::calibrate::observe(&a.model, &reqs, method, a.backend, &mut |n| {
            bar.set_position(n as u64)
        })?;
    bar.finish();
    let mut bars = crate::progress::Bars::new(show);
    let m = flamingo_calibration::calibrate::write(
        &a.model,
        &a.out,
        a.force,
        &ranges,
        method,
        reqs.len(),
        &mut bars,
    )?;
    let tensors: usize = ranges.values().map(|r| r.len()).sum();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"out": a.out, "precision": m.precision, "method": method.name(), "samples": reqs.len(), "tensors": tensors})
        );
    } else {
        println!(
            "calibrated {tensors} tensors on {} request(s) ({}); int8 QDQ export and tables in {}",
            reqs.len(),
            method.name(),
            a.out.display()
        );
    }
    Ok(())
}
