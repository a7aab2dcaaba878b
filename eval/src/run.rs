//! The eval loop of OpenFlamingo's `evaluate.py` over a compiled export:
//! for each shot count and trial, random test samples, demonstrations drawn
//! per sample from a query set of the training split (disjoint from the
//! test samples), the prompts of [`crate::prompt`] (0 shots: two text-only
//! demonstrations, their `<image>` removed), beam search 3 with length
//! penalty 0 and the task's `max_new_tokens`, the post-processing, and the
//! metric (VQA accuracy or CIDEr-D, in percent); for classification the
//! class names scored after the prompt ([`Pipeline::score_classes`]) and
//! top-1/top-5 or ROC-AUC. [`compare`] bootstraps the difference of two
//! exports run on the same samples.

use std::collections::HashSet;

use flamingo_runtime::{GenerateOptions, Media, Pipeline, Request};
use serde_json::{json, Value};

use crate::data::{Sample, Task};
use crate::{cider, classify, prompt, vqa};

/// How to run an eval.
#[derive(Clone, Debug)]
pub struct Settings {
    pub shots: Vec<usize>,
    /// Test samples per trial (0: all).
    pub num_samples: usize,
    pub seed: u64,
    /// Trials per shot count; trial `k` uses seed `seed + k`.
    pub trials: usize,
    /// Requests per batch.
    pub batch: usize,
    /// Training samples demonstrations are drawn from (OpenFlamingo: 2048).
    pub query_set_size: usize,
    pub num_beams: usize,
    pub length_penalty: f32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shots: vec![0, 4, 8, 32],
            num_samples: 5000,
            seed: 42,
            trials: 1,
            batch: 8,
            query_set_size: 2048,
            num_beams: 3,
            length_penalty: 0.0,
        }
    }
}

/// One trial: its seed, its score in percent, its predictions in the
/// published result format, and what each sample adds to the score (for
/// [`compare`]'s bootstrap).
#[derive(Clone, Debug)]
pub struct Trial {
    pub seed: u64,
    pub score: f64,
    /// ImageNet: top-5 accuracy in percent.
    pub top5: Option<f64>,
    pub predictions: Vec<Value>,
    pub per_sample: PerSample,
}

/// The score of a trial from its samples: a mean of per-sample values
/// (VQA accuracy, CIDEr-D against the fixed references, top-1 hits), or
/// the ROC-AUC of (is positive, score) pairs.
#[derive(Clone, Debug)]
pub enum PerSample {
    Mean(Vec<f64>),
    Auc(Vec<(bool, f64)>),
}

impl PerSample {
    pub fn len(&self) -> usize {
        match self {
            PerSample::Mean(v) => v.len(),
            PerSample::Auc(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The score (percent) of the samples `idx` (with repeats: a
    /// bootstrap resample); `None` when it is undefined (an AUC resample
    /// with one class only).
    pub fn score_of(&self, idx: &[usize]) -> Option<f64> {
        match self {
            PerSample::Mean(v) => {
                Some(idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len().max(1) as f64)
            }
            PerSample::Auc(v) => {
                let (labels, scores): (Vec<bool>, Vec<f64>) = idx.iter().map(|&i| v[i]).unzip();
                classify::roc_auc(&labels, &scores).ok().map(|a| 100.0 * a)
            }
        }
    }
}

/// The trials of one shot count, their mean and (population) standard
/// deviation, as `evaluate.py` reports them.
#[derive(Clone, Debug)]
pub struct ShotResult {
    pub shots: usize,
    pub trials: Vec<Trial>,
    pub mean: f64,
    pub std: f64,
}

impl ShotResult {
    /// `{"task", "shots", "trials": [score...], "mean", "std"}`.
    /// ImageNet adds `"top5": [score...]`, `"top5_mean"`.
    pub fn to_json(&self, task: Task) -> Value {
        let mut v = json!({
            "task": task.name(),
            "shots": self.shots,
            "trials": self.trials.iter().map(|t| t.score).collect::<Vec<_>>(),
            "mean": self.mean,
            "std": self.std,
        });
        let top5: Vec<f64> = self.trials.iter().filter_map(|t| t.top5).collect();
        if !top5.is_empty() {
            v["top5"] = json!(top5);
            v["top5_mean"] = json!(top5.iter().sum::<f64>() / top5.len() as f64);
        }
        v
    }
}

/// SplitMix64: small, seeded, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` distinct indices of `0..n` in random order.
    fn choose(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + (self.next() % (n - i) as u64) as usize;
            v.swap(i, j);
        }
        v.truncate(k);
        v
    }
}

fn check_images<'a>(
    samples: impl IntoIterator<Item = &'a Sample>,
    split: &str,
) -> Result<(), String> {
    for s in samples {
        if !s.image.is_file() {
            return Err(format!(
                "{}: the image of {split} sample {} is missing",
                s.image.display(),
                s.id
            ));
        }
    }
    Ok(())
}

/// Runs the eval of `task` with `train` as the demonstrations' split and
/// `test` as the queries'; `progress(done, total)` after each batch.
/// Classification tasks score `classes` (their class names, in class
/// order); the other tasks take `None`.
pub fn evaluate(
    p: &mut Pipeline,
    task: Task,
    train: &[Sample],
    test: &[Sample],
    classes: Option<&[String]>,
    s: &Settings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<ShotResult>, String> {
    if test.is_empty() {
        return Err("the test split has no samples".into());
    }
    if test.iter().any(|t| t.answers.is_empty()) {
        return Err(format!(
            "test sample {} has no answers: scoring needs the test annotations",
            test.iter()
                .find(|t| t.answers.is_empty())
                .map(|t| t.id.to_string())
                .unwrap_or_default()
        ));
    }
    let n_test = if s.num_samples == 0 {
        test.len()
    } else {
        s.num_samples.min(test.len())
    };
    let total = s.shots.len() * s.trials * n_test;
    let mut done = 0;
    let mut results = Vec::new();
    for &shots in &s.shots {
        let effective = if shots == 0 { 2 } else { shots };
        let mut trials = Vec::new();
        for k in 0..s.trials {
            let seed = s.seed + k as u64;
            let mut rng = Rng(seed);
            let chosen: Vec<&Sample> = rng
                .choose(test.len(), n_test)
                .into_iter()
                .map(|i| &test[i])
                .collect();
            check_images(chosen.iter().copied(), "test")?;
            // demonstrations never show a test image or question (ImageNet
            // ids are indices within each split: there the image decides)
            let by_id = task != Task::ImageNet;
            let taken: HashSet<String> = chosen
                .iter()
                .flat_map(|t| {
                    let id = by_id.then(|| format!("id {}", t.id));
                    id.into_iter().chain([t.image.display().to_string()])
                })
                .collect();
            let pool: Vec<&Sample> = train
                .iter()
                .filter(|d| {
                    let seen = taken.contains(&d.image.display().to_string())
                        || by_id && taken.contains(&format!("id {}", d.id));
                    !seen
                })
                .collect();
            let query_set: Vec<&Sample> = rng
                .choose(pool.len(), s.query_set_size)
                .into_iter()
                .map(|i| pool[i])
                .collect();
            if query_set.len() < effective {
                return Err(format!(
                    "{shots} shots need {effective} demonstrations; the training split has {} usable (disjoint from the test samples)",
                    query_set.len()
                ));
            }
            if let Some(d) = query_set.iter().find(|d| d.answers.is_empty()) {
                return Err(format!(
                    "training sample {}: no answer to show as a demonstration",
                    d.id
                ));
            }
            if shots > 0 {
                check_images(query_set.iter().copied(), "training")?;
            }
            if task.is_classification() {
                let classes = classes.ok_or("classification needs its class names")?;
                let mut scores = Vec::with_capacity(n_test);
                for batch in chosen.chunks(s.batch.max(1)) {
                    for q in batch {
                        let demos: Vec<&Sample> = rng
                            .choose(query_set.len(), effective)
                            .into_iter()
                            .map(|i| query_set[i])
                            .collect();
                        scores.push(class_scores(p, task, q, &demos, shots, classes)?);
                    }
                    done += batch.len();
                    progress(done, total);
                }
                trials.push(classification(task, &chosen, &scores, classes, seed)?);
                continue;
            }
            let mut outputs = Vec::with_capacity(n_test);
            for batch in chosen.chunks(s.batch.max(1)) {
                let reqs: Vec<Request> = batch
                    .iter()
                    .map(|q| {
                        let demos: Vec<&Sample> = rng
                            .choose(query_set.len(), effective)
                            .into_iter()
                            .map(|i| query_set[i])
                            .collect();
                        request(task, q, &demos, shots, s)
                    })
                    .collect();
                for (q, r) in batch.iter().zip(p.generate_batch(&reqs)) {
                    let g = r.map_err(|e| format!("test sample {}: {e}", q.id))?;
                    let text = g
                        .sequences
                        .first()
                        .map(|s| s.text.clone())
                        .unwrap_or_default();
                    outputs.push(text);
                }
                done += batch.len();
                progress(done, total);
            }
            trials.push(score(task, &chosen, &outputs, seed));
        }
        let n = trials.len() as f64;
        let mean = trials.iter().map(|t| t.score).sum::<f64>() / n;
        let var = trials.iter().map(|t| (t.score - mean).powi(2)).sum::<f64>() / n;
        results.push(ShotResult {
            shots,
            trials,
            mean,
            std: var.sqrt(),
        });
    }
    Ok(results)
}

/// The prompt and media of one query after its demonstrations.
fn request(task: Task, q: &Sample, demos: &[&Sample], shots: usize, s: &Settings) -> Request {
    let one = |text: &str, answer: Option<&str>| {
        if task.is_vqa() {
            prompt::vqa(text, answer)
        } else {
            prompt::caption(answer)
        }
    };
    let context: String = demos
        .iter()
        .map(|d| {
            let answer = if task.is_vqa() {
                d.answers[0].as_str()
            } else {
                d.text.as_str()
            };
            one(&d.text, Some(answer)) + "\n"
        })
        .collect();
    let (prompt, media) = with_media(context, demos, q, shots, one(&q.text, None));
    Request {
        prompt,
        media,
        options: GenerateOptions {
            max_new_tokens: task.max_new_tokens(),
            num_beams: s.num_beams,
            length_penalty: s.length_penalty,
            ..Default::default()
        },
    }
}

fn score(task: Task, chosen: &[&Sample], outputs: &[String], seed: u64) -> Trial {
    if task.is_vqa() {
        let answers: Vec<&str> = outputs.iter().map(|o| prompt::postprocess_vqa(o)).collect();
        let score = vqa::overall(
            chosen
                .iter()
                .zip(&answers)
                .map(|(q, a)| (*a, q.answers.as_slice())),
        );
        let predictions = chosen
            .iter()
            .zip(&answers)
            .map(|(q, a)| json!({"question_id": q.id, "answer": a}))
            .collect();
        let per = chosen
            .iter()
            .zip(&answers)
            .map(|(q, a)| 100.0 * vqa::accuracy(a, &q.answers))
            .collect();
        Trial {
            seed,
            score,
            top5: None,
            predictions,
            per_sample: PerSample::Mean(per),
        }
    } else {
        let captions: Vec<&str> = outputs
            .iter()
            .map(|o| prompt::postprocess_caption(o))
            .collect();
        let refs: Vec<&[String]> = chosen.iter().map(|q| q.answers.as_slice()).collect();
        let (mean, per) = cider::coco(&captions, &refs);
        let predictions = chosen
            .iter()
            .zip(&captions)
            .map(|(q, c)| json!({"image_id": q.id, "caption": c}))
            .collect();
        Trial {
            seed,
            score: 100.0 * mean,
            top5: None,
            predictions,
            per_sample: PerSample::Mean(per.iter().map(|c| 100.0 * c).collect()),
        }
    }
}

/// The prompt and media of a classification query after its
/// demonstrations (`evaluate_classification`: the prompts joined with
/// nothing between them). With 0 shots the two demonstrations are text
/// only, their `<image>` removed, and only the query's image is given
/// (OpenFlamingo 2.0.1 passes the demonstrations' images too, which its
/// text then never marks: cross-attention reads a demonstration's image in
/// place of the query's).
fn classification_prompt(
    task: Task,
    q: &Sample,
    demos: &[&Sample],
    shots: usize,
) -> (String, Vec<Media>) {
    let one = |s: &Sample, label: Option<&str>| match task {
        Task::HatefulMemes => prompt::hateful_memes(&s.text, label),
        _ => prompt::imagenet(label),
    };
    let context: String = demos
        .iter()
        .map(|d| one(d, d.answers.first().map(String::as_str)))
        .collect();
    with_media(context, demos, q, shots, one(q, None))
}

/// The demonstrations' `context`, then the `query` prompt, and their media:
/// with 0 shots the demonstrations are text only (their `<image>` removed,
/// no image of theirs given), then the query's image.
fn with_media(
    context: String,
    demos: &[&Sample],
    q: &Sample,
    shots: usize,
    query: String,
) -> (String, Vec<Media>) {
    let mut media: Vec<Media> = Vec::new();
    let context = if shots == 0 {
        context.replace("<image>", "")
    } else {
        media.extend(demos.iter().map(|d| Media::Image(d.image.clone())));
        context
    };
    media.push(Media::Image(q.image.clone()));
    (context + &query, media)
}

/// Each class name's mean token log-probability after the query's prompt
/// (`get_rank_classifications` with `normalize_length=True`).
fn class_scores(
    p: &mut Pipeline,
    task: Task,
    q: &Sample,
    demos: &[&Sample],
    shots: usize,
    classes: &[String],
) -> Result<Vec<f64>, String> {
    let (text, media) = classification_prompt(task, q, demos, shots);
    let scored = p
        .score_classes(&text, &media, classes)
        .map_err(|e| format!("test sample {}: {e}", q.id))?;
    Ok(scored
        .iter()
        .map(|c| c.logprob_sum as f64 / c.num_tokens.max(1) as f64)
        .collect())
}

/// A classification trial from each sample's class scores: ImageNet
/// top-1 (the score) and top-5 accuracy; HatefulMemes the ROC-AUC of the
/// probability of `yes` (the greater class name, as OpenFlamingo takes
/// it). Predictions `{"id", "label", "scores"}`: the top class and every
/// class's mean log-probability, in class order.
fn classification(
    task: Task,
    chosen: &[&Sample],
    scores: &[Vec<f64>],
    classes: &[String],
    seed: u64,
) -> Result<Trial, String> {
    let mut predictions = Vec::with_capacity(chosen.len());
    let (mut top1, mut top5, mut auc) = (Vec::new(), 0.0, Vec::new());
    let positive = classes.iter().max().cloned().unwrap_or_default();
    for (q, sc) in chosen.iter().zip(scores) {
        let truth = q.answers.first().cloned().unwrap_or_default();
        let k = if task == Task::ImageNet { 5 } else { 1 };
        let top = classify::top_k(sc, k);
        let best = &classes[top[0]];
        top1.push(if *best == truth { 100.0 } else { 0.0 });
        if top.iter().any(|&i| classes[i] == truth) {
            top5 += 100.0;
        }
        auc.push((
            truth == positive,
            classify::positive_probability(sc, classes),
        ));
        predictions.push(json!({"id": q.id, "label": best, "scores": sc}));
    }
    let n = chosen.len().max(1) as f64;
    Ok(match task {
        Task::HatefulMemes => Trial {
            seed,
            score: 100.0
                * classify::roc_auc(
                    &auc.iter().map(|a| a.0).collect::<Vec<_>>(),
                    &auc.iter().map(|a| a.1).collect::<Vec<_>>(),
                )
                .map_err(|e| format!("seed {seed}: {e}"))?,
            top5: None,
            predictions,
            per_sample: PerSample::Auc(auc),
        },
        _ => Trial {
            seed,
            score: top1.iter().sum::<f64>() / n,
            top5: Some(top5 / n),
            predictions,
            per_sample: PerSample::Mean(top1),
        },
    })
}

/// Two exports' results on the same samples and demonstrations, per shot
/// count: both means, their difference (`b - a`) and its 95% bootstrap
/// confidence interval.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub shots: usize,
    pub a: f64,
    pub b: f64,
    pub difference: f64,
    pub ci95: (f64, f64),
    pub resamples: usize,
}

impl Comparison {
    pub fn to_json(&self, task: Task) -> Value {
        json!({
            "task": task.name(),
            "shots": self.shots,
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            "ci95": [self.ci95.0, self.ci95.1],
            "resamples": self.resamples,
        })
    }
}

/// Paired bootstrap of `b - a`: each resample draws the samples of every
/// trial with replacement (the same draw for both exports), recomputes
/// both scores (the AUC too) and averages the trials' differences; the
/// interval is the 2.5th and 97.5th percentiles of `resamples` of them.
/// The two results must come from the same samples (the same settings
/// and data).
pub fn compare(
    a: &[ShotResult],
    b: &[ShotResult],
    resamples: usize,
    seed: u64,
) -> Result<Vec<Comparison>, String> {
    if a.len() != b.len() {
        return Err("the two runs have different shot counts".into());
    }
    let mut out = Vec::new();
    for (ra, rb) in a.iter().zip(b) {
        if ra.shots != rb.shots || ra.trials.len() != rb.trials.len() {
            return Err("the two runs have different shot counts or trials".into());
        }
        for (ta, tb) in ra.trials.iter().zip(&rb.trials) {
            let ids = |t: &Trial| -> Vec<Value> {
                t.predictions
                    .iter()
                    .map(|p| {
                        p.get("question_id")
                            .or_else(|| p.get("image_id"))
                            .or_else(|| p.get("id"))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect()
            };
            if ta.per_sample.len() != tb.per_sample.len() || ids(ta) != ids(tb) {
                return Err(format!(
                    "{} shots, seed {}: the two runs scored different samples",
                    ra.shots, ta.seed
                ));
            }
        }
        let mut rng = Rng(seed ^ (ra.shots as u64).wrapping_mul(0x9e37_79b9));
        let mut diffs = Vec::with_capacity(resamples);
        for _ in 0..resamples {
            let mut sum = 0.0;
            let mut ok = true;
            for (ta, tb) in ra.trials.iter().zip(&rb.trials) {
                let n = ta.per_sample.len();
                let idx: Vec<usize> = (0..n).map(|_| (rng.next() % n as u64) as usize).collect();
                match (ta.per_sample.score_of(&idx), tb.per_sample.score_of(&idx)) {
                    (Some(x), Some(y)) => sum += y - x,
                    _ => ok = false,
                }
            }
            if ok {
                diffs.push(sum / ra.trials.len() as f64);
            }
        }
        if diffs.is_empty() {
            return Err(format!(
                "{} shots: no bootstrap resample has a defined score",
                ra.shots
            ));
        }
        diffs.sort_by(f64::total_cmp);
        let at =
            |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
        out.push(Comparison {
            shots: ra.shots,
            a: ra.mean,
            b: rb.mean,
            difference: rb.mean - ra.mean,
            ci95: (at(0.025), at(0.975)),
            resamples: diffs.len(),
        });
    }
    Ok(out)
}
