//! `flamingo eval`: OpenFlamingo's few-shot benchmarks on an export (VQA
//! accuracy, captioning CIDEr-D), with the data in its published formats.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use flamingo_eval::data::{self, Sample, Task};
use flamingo_eval::run::{self, Settings};
use flamingo_runtime::BackendKind;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// vqav2, vizwiz, textvqa, coco or flickr30k
    #[arg(long)]
    task: String,
    /// Shot counts, comma-separated (0 uses two text-only demonstrations)
    #[arg(long, value_delimiter = ',', default_value = "0,4,8,32")]
    shots: Vec<usize>,
    /// Test samples per trial (0: all)
    #[arg(long, default_value_t = 5000)]
    num_samples: usize,
    /// Seed of the first trial (trial k uses seed + k)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Trials per shot count
    #[arg(long, default_value_t = 1)]
    trials: usize,
    /// Requests per batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Training samples the demonstrations are drawn from
    #[arg(long, default_value_t = 2048)]
    query_set_size: usize,
    /// Beams of the beam search (OpenFlamingo's eval: 3)
    #[arg(long, default_value_t = 3)]
    num_beams: usize,
    /// Beam search length penalty (OpenFlamingo's eval: 0)
    #[arg(long, default_value_t = 0.0)]
    length_penalty: f32,
    /// VQA: the training split's image directory (VQAv2: named train2014)
    #[arg(long)]
    train_image_dir: Option<PathBuf>,
    /// VQA: the training split's questions JSON
    #[arg(long)]
    train_questions: Option<PathBuf>,
    /// VQA: the training split's annotations JSON
    #[arg(long)]
    train_annotations: Option<PathBuf>,
    /// VQA: the test split's image directory (VQAv2: named val2014)
    #[arg(long)]
    test_image_dir: Option<PathBuf>,
    /// VQA: the test split's questions JSON
    #[arg(long)]
    test_questions: Option<PathBuf>,
    /// VQA: the test split's annotations JSON
    #[arg(long)]
    test_annotations: Option<PathBuf>,
    /// Captioning: the image directory (COCO: holding train2014/ and val2014/)
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Captioning: the Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json)
    #[arg(long)]
    karpathy_json: Option<PathBuf>,
    /// Captioning: COCO caption annotations as the CIDEr references
    /// (default: the Karpathy JSON's sentences)
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// Write the predictions in the published result format (with several
    /// shot counts or trials, one file each: NAME.{shots}shot.{seed}.json)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace existing --out files
    #[arg(long)]
    force: bool,
    /// Backend: tract (default), ort-cpu, ort-cuda, ort-tensorrt
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// One JSON line per shot count: {"task", "shots", "trials", "mean", "std"}
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    load: crate::load::LoadArgs,
}

fn need<'a>(v: &'a Option<PathBuf>, flag: &str, task: Task) -> Result<&'a Path> {
    v.as_deref()
        .ok_or_else(|| anyhow!("--task {} needs {flag}", task.name()))
}

fn splits(a: &Args, task: Task) -> Result<(Vec<Sample>, Vec<Sample>)> {
    if task.is_vqa() {
        let train = data::vqa(
            task,
            need(&a.train_image_dir, "--train-image-dir", task)?,
            need(&a.train_questions, "--train-questions", task)?,
            Some(need(&a.train_annotations, "--train-annotations", task)?),
        )
        .map_err(|e| anyhow!(e))?;
        let test = data::vqa(
            task,
            need(&a.test_image_dir, "--test-image-dir", task)?,
            need(&a.test_questions, "--test-questions", task)?,
            Some(need(&a.test_annotations, "--test-annotations", task)?),
        )
        .map_err(|e| anyhow!(e))?;
        Ok((train, test))
    } else {
        let dir = need(&a.image_dir, "--image-dir", task)?;
        let json = need(&a.karpathy_json, "--karpathy-json", task)?;
        let train = data::karpathy(task, dir, json, "train").map_err(|e| anyhow!(e))?;
        let mut test = data::karpathy(task, dir, json, "test").map_err(|e| anyhow!(e))?;
        if let Some(ann) = &a.annotations {
            data::coco_references(&mut test, ann).map_err(|e| anyhow!(e))?;
        }
        Ok((train, test))
    }
}

/// Where the predictions of (`shots`, `seed`) go.
fn out_path(out: &Path, several: bool, shots: usize, seed: u64) -> PathBuf {
    if !several {
        return out.to_path_buf();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}.{shots}shot.{seed}.json"))
}

pub fn run(a: Args) -> Result<()> {
    let task = Task::parse(&a.task).map_err(|e| anyhow!(e))?;
    if a.shots.is_empty() || a.trials == 0 {
        bail!("--shots and --trials need at least one value");
    }
    let several = a.shots.len() * a.trials > 1;
    if let Some(out) = &a.out {
        for &shots in &a.shots {
            for k in 0..a.trials {
                let p = out_path(out, several, shots, a.seed + k as u64);
                crate::load::check_output_file(&p, a.force, "--out")?;
            }
        }
    }
    let (train, test) = splits(&a, task)?;
    let mut p = a.load.pipeline(&a.model, a.backend, &Default::default())?;
    let settings = Settings {
        shots: a.shots.clone(),
        num_samples: a.num_samples,
        seed: a.seed,
        trials: a.trials,
        batch: a.batch,
        query_set_size: a.query_set_size,
        num_beams: a.num_beams,
        length_penalty: a.length_penalty,
    };
    let n = if a.num_samples == 0 {
        test.len()
    } else {
        a.num_samples.min(test.len())
    };
    let bar = crate::progress::request_bar(!a.json, a.shots.len() * a.trials * n, task.name());
    let results = run::evaluate(&mut p, task, &train, &test, &settings, &mut |done, _| {
        bar.set_position(done as u64)
    })
    .map_err(|e| anyhow!(e))?;
    bar.finish_and_clear();
    let unit = if task.is_vqa() {
        "VQA accuracy"
    } else {
        "CIDEr"
    };
    for r in &results {
        if let Some(out) = &a.out {
            for t in &r.trials {
                let path = out_path(out, several, r.shots, t.seed);
                let text = serde_json::to_string_pretty(&Value::from(t.predictions.clone()))?;
                crate::load::write_file_atomic(&path, text.as_bytes())?;
            }
        }
        if a.json {
            println!("{}", r.to_json(task));
        } else {
            let trials: Vec<String> = r.trials.iter().map(|t| format!("{:.2}", t.score)).collect();
            println!(
                "{} {}-shot {unit}: {:.2} (std {:.2}; trials {})",
                task.name(),
                r.shots,
                r.mean,
                r.std,
                trials.join(", ")
            );
        }
    }
    Ok(())
}
