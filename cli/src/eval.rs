//! `flamingo eval`: OpenFlamingo's few-shot benchmarks on an export (VQA
//! accuracy, captioning CIDEr-D, HatefulMemes ROC-AUC, ImageNet top-1 and
//! top-5), with the data in its published formats; `--compare` runs a
//! second export on the same samples and bootstraps the difference.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use flamingo_eval::classify;
use flamingo_eval::data::{self, Sample, Task};
use flamingo_eval::run::{self, Settings};
use flamingo_runtime::BackendKind;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// vqav2, vizwiz, textvqa, coco, flickr30k, hateful_memes or imagenet
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
    /// VQA: the training split's annotations JSON; HatefulMemes: its
    /// train.jsonl
    #[arg(long)]
    train_annotations: Option<PathBuf>,
    /// VQA: the test split's image directory (VQAv2: named val2014)
    #[arg(long)]
    test_image_dir: Option<PathBuf>,
    /// VQA: the test split's questions JSON
    #[arg(long)]
    test_questions: Option<PathBuf>,
    /// VQA: the test split's annotations JSON; HatefulMemes: its
    /// dev.jsonl (or test) with labels
    #[arg(long)]
    test_annotations: Option<PathBuf>,
    /// Captioning: the image directory (COCO: holding train2014/ and
    /// val2014/); HatefulMemes: its img/ directory
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Captioning: the Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json)
    #[arg(long)]
    karpathy_json: Option<PathBuf>,
    /// Captioning: COCO caption annotations as the CIDEr references
    /// (default: the Karpathy JSON's sentences)
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// ImageNet: the directory holding train/ and val/, one folder per
    /// class in each (as torchvision's ImageFolder reads them)
    #[arg(long)]
    imagenet_root: Option<PathBuf>,
    /// ImageNet: the class names, one per line in class-folder order
    /// (default: OpenFlamingo's 1000 ImageNet-1k names)
    #[arg(long)]
    class_names: Option<PathBuf>,
    /// A second export to run on the same samples and demonstrations:
    /// both scores and their difference with a 95% bootstrap interval
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Bootstrap resamples of --compare
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
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

type Splits = (Vec<Sample>, Vec<Sample>, Option<Vec<String>>);

fn splits(a: &Args, task: Task) -> Result<Splits> {
    if task == Task::HatefulMemes {
        let dir = need(&a.image_dir, "--image-dir", task)?;
        let train = data::hateful_memes(
            dir,
            need(&a.train_annotations, "--train-annotations", task)?,
        )
        .map_err(|e| anyhow!(e))?;
        let test = data::hateful_memes(dir, need(&a.test_annotations, "--test-annotations", task)?)
            .map_err(|e| anyhow!(e))?;
        let classes = classify::HATEFUL_MEMES_CLASSES.map(String::from).to_vec();
        return Ok((train, test, Some(classes)));
    }
    if task == Task::ImageNet {
        let root = need(&a.imagenet_root, "--imagenet-root", task)?;
        let classes = match &a.class_names {
            Some(p) => data::class_names(p).map_err(|e| anyhow!(e))?,
            None => classify::imagenet_classes(),
        };
        let train = data::image_folder(&root.join("train"), &classes).map_err(|e| anyhow!(e))?;
        let test = data::image_folder(&root.join("val"), &classes).map_err(|e| anyhow!(e))?;
        return Ok((train, test, Some(classes)));
    }
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
        Ok((train, test, None))
    } else {
        let dir = need(&a.image_dir, "--image-dir", task)?;
        let json = need(&a.karpathy_json, "--karpathy-json", task)?;
        let train = data::karpathy(task, dir, json, "train").map_err(|e| anyhow!(e))?;
        let mut test = data::karpathy(task, dir, json, "test").map_err(|e| anyhow!(e))?;
        if let Some(ann) = &a.annotations {
            data::coco_references(&mut test, ann).map_err(|e| anyhow!(e))?;
        }
        Ok((train, test, None))
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
    let (train, test, classes) = splits(&a, task)?;
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
    let eval_on = |model: &Path| -> Result<Vec<run::ShotResult>> {
        let mut p = a.load.pipeline(model, a.backend, &Default::default())?;
        let label = format!("{} {}", task.name(), model.display());
        let bar = crate::progress::request_bar(!a.json, a.shots.len() * a.trials * n, &label);
        let results = run::evaluate(
            &mut p,
            task,
            &train,
            &test,
            classes.as_deref(),
            &settings,
            &mut |done, _| bar.set_position(done as u64),
        )
        .map_err(|e| anyhow!("{}: {e}", model.display()))?;
        bar.finish_and_clear();
        Ok(results)
    };
    let results = eval_on(&a.model)?;
    let unit = task.metric();
    for r in &results {
        if let Some(out) = &a.out {
            for t in &r.trials {
                let path = out_path(out, several, r.shots, t.seed);
                let text = serde_json::to_string_pretty(&Value::from(t.predictions.clone()))?;
                crate::load::write_file_atomic(&path, text.as_bytes())?;
            }
        }
        if a.compare.is_some() {
            continue;
        }
        if a.json {
            println!("{}", r.to_json(task));
        } else {
            println!("{}", line(task, unit, r));
        }
    }
    if let Some(other) = &a.compare {
        let second = eval_on(other)?;
        let cmp = run::compare(&results, &second, a.bootstrap, a.seed).map_err(|e| anyhow!(e))?;
        for ((c, ra), rb) in cmp.iter().zip(&results).zip(&second) {
            if a.json {
                let mut v = c.to_json(task);
                v["model"] = ra.to_json(task);
                v["compare"] = rb.to_json(task);
                println!("{v}");
            } else {
                println!("{}: {}", a.model.display(), line(task, unit, ra));
                println!("{}: {}", other.display(), line(task, unit, rb));
                println!(
                    "{} {}-shot difference: {:+.2} (95% bootstrap interval {:+.2} to {:+.2}, {} resamples)",
                    task.name(),
                    c.shots,
                    c.difference,
                    c.ci95.0,
                    c.ci95.1,
                    c.resamples
                );
            }
        }
    }
    Ok(())
}

/// One shot count's result as text.
fn line(task: Task, unit: &str, r: &run::ShotResult) -> String {
    let trials: Vec<String> = r.trials.iter().map(|t| format!("{:.2}", t.score)).collect();
    let mut s = format!(
        "{} {}-shot {unit}: {:.2} (std {:.2}; trials {})",
        task.name(),
        r.shots,
        r.mean,
        r.std,
        trials.join(", ")
    );
    let top5: Vec<f64> = r.trials.iter().filter_map(|t| t.top5).collect();
    if !top5.is_empty() {
        s += &format!(
            "; top-5 {:.2}",
            top5.iter().sum::<f64>() / top5.len() as f64
        );
    }
    s
}
