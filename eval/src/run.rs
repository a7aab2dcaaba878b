//! The eval loop of OpenFlamingo's `evaluate.py` over a compiled export:
//! for each shot count and trial, random test samples, demonstrations drawn
//! per sample from a query set of the training split (disjoint from the
//! test samples), the prompts of [`crate::prompt`] (0 shots: two text-only
//! demonstrations, their `<image>` removed), beam search 3 with length
//! penalty 0 and the task's `max_new_tokens`, the post-processing, and the
//! metric (VQA accuracy or CIDEr-D, in percent).

use std::collections::HashSet;

use flamingo_runtime::{GenerateOptions, Media, Pipeline, Request};
use serde_json::{json, Value};

use crate::data::{Sample, Task};
use crate::{cider, prompt, vqa};

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
/// published result format.
#[derive(Clone, Debug)]
pub struct Trial {
    pub seed: u64,
    pub score: f64,
    pub predictions: Vec<Value>,
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
    pub fn to_json(&self, task: Task) -> Value {
        json!({
            "task": task.name(),
            "shots": self.shots,
            "trials": self.trials.iter().map(|t| t.score).collect::<Vec<_>>(),
            "mean": self.mean,
            "std": self.std,
        })
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
pub fn evaluate(
    p: &mut Pipeline,
    task: Task,
    train: &[Sample],
    test: &[Sample],
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
            // demonstrations never show a test image or question
            let taken: HashSet<String> = chosen
                .iter()
                .flat_map(|t| [t.id.to_string(), t.image.display().to_string()])
                .collect();
            let pool: Vec<&Sample> = train
                .iter()
                .filter(|d| {
                    !taken.contains(&d.id.to_string())
                        && !taken.contains(&d.image.display().to_string())
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
    let mut context: String = demos
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
    let mut media: Vec<Media> = Vec::new();
    if shots == 0 {
        context = context.replace("<image>", "");
    } else {
        media.extend(demos.iter().map(|d| Media::Image(d.image.clone())));
    }
    media.push(Media::Image(q.image.clone()));
    Request {
        prompt: context + &one(&q.text, None),
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
        Trial {
            seed,
            score,
            predictions,
        }
    } else {
        let captions: Vec<&str> = outputs
            .iter()
            .map(|o| prompt::postprocess_caption(o))
            .collect();
        let refs: Vec<&[String]> = chosen.iter().map(|q| q.answers.as_slice()).collect();
        let (mean, _) = cider::coco(&captions, &refs);
        let predictions = chosen
            .iter()
            .zip(&captions)
            .map(|(q, c)| json!({"image_id": q.id, "caption": c}))
            .collect();
        Trial {
            seed,
            score: 100.0 * mean,
            predictions,
        }
    }
}
