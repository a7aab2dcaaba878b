//! Beam search as transformers' `beam_search` with `BeamSearchScorer`:
//! per step the `2 k` best continuations over all beams (log-softmax, the
//! logits processors, plus the beam's score); a stop token among the best
//! `k` ends a hypothesis; done when `k` hypotheses are in and none running
//! can beat the worst (or at once with `early_stopping`). The result is the
//! best finished hypotheses, else the best running beams.

use ndarray::ArrayView2;

use super::{log_softmax, process, Decision, GenerateOptions, Search};

/// Beam search over `num_beams` rows of one prompt.
pub struct BeamSearch {
    opts: GenerateOptions,
    stop: Vec<u32>,
    /// Prompt length.
    prompt: usize,
    seqs: Vec<Vec<u32>>,
    scores: Vec<f32>,
    hyps: BeamHyps,
    cur_len: usize,
    done: bool,
}

impl BeamSearch {
    pub fn new(opts: &GenerateOptions, prompt: &[u32], stop: &[u32]) -> BeamSearch {
        let k = opts.num_beams;
        BeamSearch {
            opts: opts.clone(),
            stop: stop.to_vec(),
            prompt: prompt.len(),
            seqs: vec![prompt.to_vec(); k],
            // only the first beam is live at the start: the others are copies
            scores: (0..k).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect(),
            hyps: BeamHyps::new(k, opts.length_penalty, opts.early_stopping),
            cur_len: prompt.len(),
            done: false,
        }
    }

    fn max_len(&self) -> usize {
        self.prompt + self.opts.max_new_tokens
    }
}

impl Search for BeamSearch {
    fn rows(&self) -> usize {
        self.opts.num_beams
    }

    fn is_done(&self) -> bool {
        self.done || self.cur_len >= self.max_len()
    }

    fn step(
        &mut self,
        logits: ArrayView2<f32>,
        _emit: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Decision, String> {
        let (k, s, o) = (self.opts.num_beams, self.prompt, &self.opts);
        let v = logits.ncols();
        let mut cand: Vec<(f32, usize)> = Vec::with_capacity(k * v);
        for (bi, seq) in self.seqs.iter().enumerate() {
            let raw: Vec<f32> = logits.row(bi).iter().copied().collect();
            let mut lp = log_softmax(&raw);
            process(&mut lp, seq, o);
            for (t, x) in lp.into_iter().enumerate() {
                cand.push((x + self.scores[bi], bi * v + t));
            }
        }
        cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        cand.truncate(2 * k);
        let mut next: Vec<(f32, u32, usize)> = Vec::with_capacity(k);
        for (rank, &(score, flat)) in cand.iter().enumerate() {
            let (bi, tok) = (flat / v, (flat % v) as u32);
            if self.stop.contains(&tok) {
                if rank >= k {
                    continue;
                }
                self.hyps
                    .add(self.seqs[bi].clone(), score, self.cur_len + 1 - s);
            } else {
                next.push((score, tok, bi));
            }
            if next.len() == k {
                break;
            }
        }
        if next.len() < k {
            return Err("beam search ran out of candidates".into());
        }
        self.done = self.hyps.is_done(cand[0].0, self.cur_len + 1 - s);
        let order: Vec<usize> = next.iter().map(|n| n.2).collect();
        self.seqs = next
            .iter()
            .map(|&(_, tok, bi)| {
                let mut q = self.seqs[bi].clone();
                q.push(tok);
                q
            })
            .collect();
        self.scores = next.iter().map(|n| n.0).collect();
        self.cur_len += 1;
        Ok(Decision {
            tokens: next.iter().map(|n| n.1).collect(),
            reorder: Some(order),
            done: self.is_done(),
            stop: false,
        })
    }

    fn finish(&self) -> Vec<(Vec<u32>, Option<f32>)> {
        let mut hyps = self.hyps.clone();
        if !self.done {
            for (bi, seq) in self.seqs.iter().enumerate() {
                hyps.add(seq.clone(), self.scores[bi], seq.len() - self.prompt);
            }
        }
        let max_len = self.max_len();
        hyps.best()
            .into_iter()
            .take(self.opts.num_return_sequences)
            .map(|(score, mut hyp)| {
                if hyp.len() < max_len {
                    hyp.push(self.stop[0]);
                }
                (hyp[self.prompt..].to_vec(), Some(score))
            })
            .collect()
    }
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
