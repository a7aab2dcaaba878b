//! Token selection with transformers 4.36 semantics: logits processors
//! (repetition penalty, no-repeat n-gram), warpers (temperature, top-k,
//! top-p), seeded sampling, and the beam hypotheses of `BeamSearchScorer`.

use serde::{Deserialize, Serialize};

/// How to pick tokens. Defaults follow transformers' `GenerationConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub num_beams: usize,
    pub do_sample: bool,
    /// Sampling temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens when sampling (0 = off; transformers' default 50).
    pub top_k: usize,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub no_repeat_ngram_size: usize,
    pub length_penalty: f32,
    pub early_stopping: bool,
    pub num_return_sequences: usize,
    pub seed: u64,
    /// Stop tokens; empty means the model's `<|endofchunk|>`.
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 20,
            num_beams: 1,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            length_penalty: 1.0,
            early_stopping: false,
            num_return_sequences: 1,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

impl GenerateOptions {
    /// Checks ranges; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0
            || self.num_return_sequences > self.num_beams.max(1) && !self.do_sample
        {
            return Err(format!(
                "num_return_sequences ({}) must be between 1 and num_beams ({})",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.do_sample && self.num_beams > 1 {
            return Err(
                "beam sampling is not supported: use either --do-sample or --num-beams".into(),
            );
        }
        if self.temperature.is_nan() || self.temperature < 0.0 || !self.temperature.is_finite() {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }

    /// Greedy in effect: no sampling, or sampling at temperature 0.
    pub fn is_greedy(&self) -> bool {
        self.num_beams <= 1 && (!self.do_sample || self.temperature == 0.0)
    }
}

/// SplitMix64: a small, seedable, reproducible generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `RepetitionPenaltyLogitsProcessor` then `NoRepeatNGramLogitsProcessor`,
/// over the whole sequence so far (prompt included).
pub fn process(scores: &mut [f32], seq: &[u32], o: &GenerateOptions) {
    if o.repetition_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in seq {
            if seen.insert(t) {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s < 0.0 {
                        *s * o.repetition_penalty
                    } else {
                        *s / o.repetition_penalty
                    };
                }
            }
        }
    }
    let n = o.no_repeat_ngram_size;
    if n > 0 && seq.len() + 1 >= n {
        let prefix = &seq[seq.len() + 1 - n..];
        for w in seq.windows(n) {
            if w[..n - 1] == *prefix {
                if let Some(s) = scores.get_mut(w[n - 1] as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
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

pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = x.iter().map(|v| (v - m).exp()).sum::<f32>().ln() + m;
    x.iter().map(|v| v - lse).collect()
}

/// The first index of the maximum (torch's argmax on CPU).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
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

/// Finished hypotheses of one batch item (`BeamHypotheses`).
#[derive(Clone, Debug, Default)]
pub struct BeamHyps {
    pub beams: Vec<(f32, Vec<u32>)>,
    worst: f32,
    num_beams: usize,
    length_penalty: f32,
    early_stopping: bool,
}

impl BeamHyps {
    pub fn new(num_beams: usize, length_penalty: f32, early_stopping: bool) -> BeamHyps {
        BeamHyps {
            beams: Vec::new(),
            worst: 1e9,
            num_beams,
            length_penalty,
            early_stopping,
        }
    }

    pub fn add(&mut self, hyp: Vec<u32>, sum_logprobs: f32, generated_len: usize) {
        let score = sum_logprobs / (generated_len as f32).powf(self.length_penalty);
        if self.beams.len() < self.num_beams || score > self.worst {
            self.beams.push((score, hyp));
            if self.beams.len() > self.num_beams {
                let mut sorted: Vec<(f32, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b.0, i))
                    .collect();
                sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                self.beams.remove(sorted[0].1);
                self.worst = sorted[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    pub fn is_done(&self, best_sum_logprobs: f32, generated_len: usize) -> bool {
        if self.beams.len() < self.num_beams {
            return false;
        }
        if self.early_stopping {
            return true;
        }
        let highest = best_sum_logprobs / (generated_len as f32).powf(self.length_penalty);
        self.worst >= highest
    }

    /// Best first (a stable sort, then popped from the end, as transformers does).
    pub fn best(&self) -> Vec<(f32, Vec<u32>)> {
        let mut b = self.beams.clone();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b.reverse();
        b
    }
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

    #[test]
    fn repetition_penalty_and_no_repeat_ngram_follow_transformers() {
        let o = GenerateOptions {
            repetition_penalty: 2.0,
            no_repeat_ngram_size: 2,
            ..Default::default()
        };
        let mut s = vec![4.0, -4.0, 1.0, 1.0];
        // sequence 1 0 1: bigram (1, 0) exists, so 0 is banned after 1
        process(&mut s, &[1, 0, 1], &o);
        assert_eq!(s[0], f32::NEG_INFINITY);
        assert_eq!(s[1], -8.0);
        assert_eq!(s[2], 1.0);
    }

    #[test]
    fn the_rng_is_reproducible() {
        let a: Vec<u64> = (0..3)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..3)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }
}
