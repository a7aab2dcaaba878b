//! `flamingo`: export OpenFlamingo checkpoints to ONNX and run them.

mod bench;
mod calibrate;
mod compare;
mod convert;
mod encode;
mod eval;
mod export;
mod generate;
mod gpu;
mod inspect;
mod load;
mod media;
mod plot;
mod progress;
mod quantize;
mod score;
mod serve;
mod triton;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flamingo",
    version,
    about = "Export OpenFlamingo checkpoints to ONNX and run them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Export a release (CLIP weights, LM dir, checkpoint.pt, tokenizer) to ONNX graphs + manifest.
    Export(export::Args),
    /// Rewrite an fp32 export to another precision (fp16).
    Convert(convert::Args),
    /// Weight-only quantisation of an fp32 export (int8 portable, int4 ONNX Runtime only).
    Quantize(quantize::Args),
    /// Static int8 calibration: QDQ graphs, TensorRT caches, ONNX Runtime TensorRT tables, a report.
    Calibrate(calibrate::Args),
    /// Measure latency and memory: preprocessing, vision, media K/V, prefill, decode per batch size.
    Bench(bench::Args),
    /// Compare two exports of a model (e.g. fp32 and int8) on requests: per graph and end to end.
    Compare(compare::Args),
    /// Print an export's manifest readably (or as JSON).
    Inspect(inspect::Args),
    /// Run the vision encoder and resampler on images or videos; write a .safetensors.
    Encode(encode::Args),
    /// Generate text from a prompt with images/videos (or a JSONL batch of requests).
    Generate(generate::Args),
    /// Score candidate continuations by the sum of their token log-probabilities.
    Score(score::Args),
    /// Few-shot benchmarks (VQA, captioning, HatefulMemes, ImageNet) as OpenFlamingo's eval runs them.
    Eval(eval::Args),
    /// An OpenAI-compatible HTTP server: continuous batching, streaming, media and prefix caches.
    Serve(serve::Args),
    /// A Triton Inference Server model repository serving an export.
    ExportTriton(triton::Args),
}

/// SIGINT, SIGTERM and SIGHUP remove the outputs still being written
/// before the process ends (nothing half-written is left behind).
fn clean_up_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            flamingo_export::output::remove_partials();
            eprintln!("flamingo: interrupted (signal {sig}); partial outputs removed");
            std::process::exit(128 + sig);
        }
    });
}

fn main() {
    clean_up_on_signals();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Export(a) => export::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Encode(a) => encode::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Score(a) => score::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Serve(a) => serve::run(a),
        Command::ExportTriton(a) => triton::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", describe(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, skipping causes already spelled out in the message.
fn describe(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}
