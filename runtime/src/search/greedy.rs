//! Greedy search: the most likely token after the logits processors
//! (transformers' `greedy_search`; sampling at temperature 0 too).

use ndarray::ArrayView2;

use super::{argmax, Decision, GenerateOptions, Row, Search};

/// One row, greedily.
pub struct Greedy(Row);

impl Greedy {
    pub fn new(opts: &GenerateOptions, prompt: &[u32], stop: &[u32]) -> Greedy {
        Greedy(Row::new(opts, prompt, stop))
    }
}

impl Search for Greedy {
    fn rows(&self) -> usize {
        1
    }
    fn is_done(&self) -> bool {
        self.0.is_done()
    }
    fn step(
        &mut self,
        logits: ArrayView2<f32>,
        emit: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Decision, String> {
        Ok(self.0.step(logits, &mut |s, _| argmax(s), emit))
    }
    fn finish(&self) -> Vec<(Vec<u32>, Option<f32>)> {
        self.0.finish()
    }
}
