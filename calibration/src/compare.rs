//! How precision is judged: two exports of one model (say fp32 and int4) run
//! on the same requests, compared per graph and end to end.

use ndarray::{ArrayD, Axis};
use serde::Serialize;

use flamingo_runtime::decoder::{media_time, position_ids};
use flamingo_runtime::{GenerateOptions, Pipeline, Request, Result, Step};

/// Agreement of two tensors.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Agreement {
    /// Smallest cosine similarity over the requests.
    pub cosine_min: f64,
    pub cosine_mean: f64,
    pub max_abs: f32,
    pub count: usize,
}

impl Agreement {
    fn add(&mut self, a: &ArrayD<f32>, b: &ArrayD<f32>) {
        let c = cosine(a, b);
        let d = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        self.cosine_min = if self.count == 0 {
            c
        } else {
            self.cosine_min.min(c)
        };
        self.cosine_mean = (self.cosine_mean * self.count as f64 + c) / (self.count + 1) as f64;
        self.max_abs = self.max_abs.max(d);
        self.count += 1;
    }
}

/// The comparison report (`flamingo compare --json`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub requests: usize,
    pub vision_tokens: Agreement,
    pub latents: Agreement,
    pub media_kv: Agreement,
    /// Decoder logits on the prompt followed by A's greedy tokens (teacher forcing).
    pub logits: Agreement,
    /// Share of generated positions where both models' top-1 token agree.
    pub top1_agreement: f64,
    /// Share of requests whose greedy sequences are identical.
    pub greedy_match_rate: f64,
}

pub fn cosine(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b.iter()) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

fn argmax_rows(l: &ArrayD<f32>) -> Vec<usize> {
    l.index_axis(Axis(0), 0)
        .outer_iter()
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Runs every request on both pipelines and compares.
pub fn compare(a: &mut Pipeline, b: &mut Pipeline, requests: &[Request]) -> Result<Report> {
    let mut r = Report::default();
    let (mut agree, mut positions, mut matches) = (0usize, 0usize, 0usize);
    for req in requests {
        // per graph
        if !req.media.is_empty() {
            let frames: Vec<_> = req.media.iter().flat_map(|m| m.frames().to_vec()).collect();
            let px = a.model.pixels(&frames)?.into_dyn();
            let (ta, tb) = (
                a.model.vision_tokens(px.clone())?,
                b.model.vision_tokens(px)?,
            );
            r.vision_tokens.add(&ta, &tb);
        }
        let (la, lb) = (a.latents(&req.media)?, b.latents(&req.media)?);
        if !req.media.is_empty() {
            r.latents.add(&la, &lb);
        }
        let (ka, kb) = (a.model.media_kv(la.clone())?, b.model.media_kv(la)?);
        for ((_, x), (_, y)) in ka.tensors.iter().zip(&kb.tensors) {
            r.media_kv.add(x, y);
        }
        // end to end: A's greedy continuation, teacher-forced through both
        let greedy = Request {
            options: GenerateOptions {
                max_new_tokens: req.options.max_new_tokens,
                stop_tokens: req.options.stop_tokens.clone(),
                ..Default::default()
            },
            ..req.clone()
        };
        let ga = a.generate(&greedy)?;
        let gb = b.generate(&greedy)?;
        let (sa, sb) = (
            &ga.sequences[0].generated_ids,
            &gb.sequences[0].generated_ids,
        );
        if sa == sb {
            matches += 1;
        }
        let mut ids: Vec<i64> = ga.prompt_ids.iter().map(|&t| t as i64).collect();
        let s = ids.len();
        ids.extend(sa.iter().map(|&t| t as i64));
        let n = ids.len();
        let media_token = a.model.manifest.special_tokens.media as i64;
        let mut mt = media_time(&ids[..s], media_token);
        let last = mt.last().copied().unwrap_or(0);
        mt.resize(n, last);
        let row = |v: Vec<i64>| ndarray::Array2::from_shape_vec((1, n), v);
        let step = Step {
            input_ids: row(ids.clone())
                .map_err(|e| flamingo_runtime::Error::Input(e.to_string()))?,
            attention_mask: row(vec![1; n])
                .map_err(|e| flamingo_runtime::Error::Input(e.to_string()))?,
            position_ids: row(position_ids(&vec![1; n]))
                .map_err(|e| flamingo_runtime::Error::Input(e.to_string()))?,
            media_time: row(mt).map_err(|e| flamingo_runtime::Error::Input(e.to_string()))?,
            keep: n - s + 1,
        };
        let (mut ca, mut cb) = (a.model.empty_cache(1), b.model.empty_cache(1));
        let xa = a.model.decode(&step, &ka, &mut ca)?;
        let xb = b.model.decode(&step, &kb, &mut cb)?;
        r.logits.add(&xa, &xb);
        // positions predicting generated tokens: all kept but the last
        let (ta, tb) = (argmax_rows(&xa), argmax_rows(&xb));
        let steps = ta.len().saturating_sub(1).max(1).min(ta.len());
        agree += ta[..steps]
            .iter()
            .zip(&tb[..steps])
            .filter(|(x, y)| x == y)
            .count();
        positions += steps;
        r.requests += 1;
    }
    r.top1_agreement = agree as f64 / positions.max(1) as f64;
    r.greedy_match_rate = matches as f64 / r.requests.max(1) as f64;
    Ok(r)
}
