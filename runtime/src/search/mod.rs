//! Token selection with transformers 4.36 semantics, one strategy per file
//! behind one stepping trait ([`Search`]): [`greedy`], [`sampling`]
//! (temperature, top-k, top-p warpers, seeded draws) and [`beam`]
//! (`BeamSearchScorer`). Here: the options, the logits processors every
//! strategy applies (repetition penalty, no-repeat n-gram) and the
//! bookkeeping of one generated row.
//!
//! A search owns a group of decoder rows (one for greedy and sampling, the
//! beams for beam search); the pipeline runs one or several groups as one
//! decoder batch, hands each its rows' last logits per step, and feeds
//! back the tokens it picks (reordering the KV cache when beams swap).

pub mod beam;
pub mod greedy;
pub mod sampling;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

pub use beam::{BeamHyps, BeamSearch};
pub use greedy::Greedy;
pub use sampling::Sampling;

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
        // (sampling returns one sequence: several are several seeds)
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams.max(1) {
            return Err(format!(
                "num_return_sequences ({}) must be between 1 and num_beams ({}); for several samples, sample with several seeds",
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

/// What a search decided at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The next token of each of the search's rows.
    pub tokens: Vec<u32>,
    /// Row `i` continues row `reorder[i]` of the last step (beams), if any moved.
    pub reorder: Option<Vec<usize>>,
    /// The search has its result: it needs no further step.
    pub done: bool,
    /// The caller asked to stop (a streaming callback returned false).
    pub stop: bool,
}

/// One decoding strategy over a group of decoder rows, stepped by the
/// pipeline.
pub trait Search: Send {
    /// The decoder rows it runs.
    fn rows(&self) -> usize;
    /// Done before any step (nothing to generate).
    fn is_done(&self) -> bool;
    /// Picks the next tokens from the rows' last logits (`[rows, vocab]`);
    /// `emit` streams a token (returning false asks to stop).
    fn step(
        &mut self,
        logits: ArrayView2<f32>,
        emit: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Decision, String>;
    /// The sequences found, best first: new tokens and, for beams, the score.
    fn finish(&self) -> Vec<(Vec<u32>, Option<f32>)>;
}

/// The search `opts` ask for, over `prompt` (the row as the decoder sees
/// it, left padding included) with the stop tokens `stop`.
pub fn search(opts: &GenerateOptions, prompt: &[u32], stop: &[u32]) -> Box<dyn Search> {
    if opts.num_beams > 1 {
        Box::new(BeamSearch::new(opts, prompt, stop))
    } else if opts.is_greedy() {
        Box::new(Greedy::new(opts, prompt, stop))
    } else {
        Box::new(Sampling::new(opts, prompt, stop))
    }
}

/// One generated row: the sequence so far (the processors read it), the
/// new tokens, and when to stop.
#[derive(Clone, Debug)]
pub struct Row {
    seq: Vec<u32>,
    generated: Vec<u32>,
    stop: Vec<u32>,
    opts: GenerateOptions,
}

impl Row {
    pub fn new(opts: &GenerateOptions, prompt: &[u32], stop: &[u32]) -> Row {
        Row {
            seq: prompt.to_vec(),
            generated: Vec::new(),
            stop: stop.to_vec(),
            opts: opts.clone(),
        }
    }

    fn is_done(&self) -> bool {
        self.generated.len() >= self.opts.max_new_tokens
    }

    /// Processes `logits`, picks with `pick`, streams and records the token.
    fn step(
        &mut self,
        logits: ArrayView2<f32>,
        pick: &mut dyn FnMut(&mut Vec<f32>, &GenerateOptions) -> u32,
        emit: &mut dyn FnMut(u32) -> bool,
    ) -> Decision {
        let mut scores: Vec<f32> = logits.row(0).iter().copied().collect();
        process(&mut scores, &self.seq, &self.opts);
        let t = pick(&mut scores, &self.opts);
        self.generated.push(t);
        self.seq.push(t);
        let stop = !emit(t);
        let done = self.stop.contains(&t) || self.is_done();
        Decision {
            tokens: vec![t],
            reorder: None,
            done,
            stop,
        }
    }

    fn finish(&self) -> Vec<(Vec<u32>, Option<f32>)> {
        vec![(self.generated.clone(), None)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
