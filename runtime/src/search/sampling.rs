//! Sampling: the logits processors, then the warpers (temperature, top-k,
//! top-p), then one draw from the softmax with the request's seeded
//! generator (transformers' `sample`).

use ndarray::ArrayView2;

use super::{softmax, Decision, GenerateOptions, Rng, Row, Search};

/// One row, sampled.
pub struct Sampling {
    row: Row,
    rng: Rng,
}

impl Sampling {
    pub fn new(opts: &GenerateOptions, prompt: &[u32], stop: &[u32]) -> Sampling {
        Sampling {
            row: Row::new(opts, prompt, stop),
            rng: Rng::new(opts.seed),
        }
    }
}

impl Search for Sampling {
    fn rows(&self) -> usize {
        1
    }
    fn is_done(&self) -> bool {
        self.row.is_done()
    }
    fn step(
        &mut self,
        logits: ArrayView2<f32>,
        emit: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Decision, String> {
        let rng = &mut self.rng;
        Ok(self.row.step(
            logits,
            &mut |s, o| {
                warp(s, o);
                sample(s, rng)
            },
            emit,
        ))
    }
    fn finish(&self) -> Vec<(Vec<u32>, Option<f32>)> {
        self.row.finish()
    }
}

/// Temperature, top-k, top-p (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
/// `TopPLogitsWarper`), in that order.
pub fn warp(scores: &mut [f32], o: &GenerateOptions) {
    if o.temperature != 1.0 && o.temperature > 0.0 {
        for s in scores.iter_mut() {
            *s /= o.temperature;
        }
    }
    if o.top_k > 0 && o.top_k < scores.len() {
        let mut sorted: Vec<f32> = scores.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[o.top_k - 1];
        for s in scores.iter_mut() {
            if *s < kth {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    if o.top_p < 1.0 {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        // ascending, as transformers sorts
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let probs = softmax(&idx.iter().map(|&i| scores[i]).collect::<Vec<_>>());
        let mut cum = 0.0f32;
        let last = idx.len() - 1;
        for (r, &i) in idx.iter().enumerate() {
            cum += probs[r];
            if cum <= 1.0 - o.top_p && r != last {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Draws from `softmax(scores)` (multinomial with one sample).
pub fn sample(scores: &[f32], rng: &mut Rng) -> u32 {
    let p = softmax(scores);
    let u = rng.uniform() as f32;
    let mut cum = 0.0;
    let mut last_ok = 0;
    for (i, pi) in p.iter().enumerate() {
        if *pi > 0.0 {
            last_ok = i;
            cum += pi;
            if u < cum {
                return i as u32;
            }
        }
    }
    last_ok as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_keep_the_likely_tokens() {
        let o = GenerateOptions {
            top_k: 2,
            ..Default::default()
        };
        let mut s = vec![1.0, 3.0, 2.0, 0.0];
        warp(&mut s, &o);
        assert_eq!(s[0], f32::NEG_INFINITY);
        assert_eq!(s[3], f32::NEG_INFINITY);
        assert_eq!((s[1], s[2]), (3.0, 2.0));
        let o = GenerateOptions {
            top_k: 0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = vec![0.0, 5.0, 0.0];
        warp(&mut s, &o);
        assert_eq!(s.iter().filter(|v| v.is_finite()).count(), 1);
    }
}
