//! Activation statistics for static int8: which tensors to observe, a
//! streaming |x| histogram per tensor, and the range each method picks.

use std::collections::HashSet;

use flamingo_graphs::{DType, Graph, IoSpec, Node};
use serde::Serialize;

/// How a tensor's clipping threshold is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// TensorRT's entropy (KL-divergence) calibration over 2048 bins.
    Entropy,
    /// The given percentile of |x|.
    Percentile(f64),
    /// max |x|.
    MinMax,
}

impl Method {
    pub fn name(self) -> String {
        match self {
            Method::Entropy => "entropy".into(),
            Method::Percentile(p) => format!("percentile-{p}"),
            Method::MinMax => "minmax".into(),
        }
    }
}

pub const BINS: usize = 2048;
const QUANT_BINS: usize = 128;

/// Streaming statistics of one tensor.
#[derive(Clone, Debug)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub count: u64,
    hist: Vec<u64>,
    range: f32,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            hist: vec![0; BINS],
            range: 0.0,
        }
    }
}

impl Stats {
    pub fn observe(&mut self, data: &[f32]) {
        let mut absmax = 0f32;
        for &v in data {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
                absmax = absmax.max(v.abs());
            }
        }
        if absmax > self.range {
            // widen the histogram, moving old counts by their bin centres
            let old = std::mem::replace(&mut self.hist, vec![0; BINS]);
            let (ow, nw) = (self.range / BINS as f32, absmax / BINS as f32);
            for (i, c) in old.into_iter().enumerate().filter(|(_, c)| *c > 0) {
                let centre = (i as f32 + 0.5) * ow;
                let j = ((centre / nw) as usize).min(BINS - 1);
                self.hist[j] += c;
            }
            self.range = absmax;
        }
        if self.range > 0.0 {
            let w = self.range / BINS as f32;
            for &v in data {
                if v.is_finite() {
                    self.hist[((v.abs() / w) as usize).min(BINS - 1)] += 1;
                }
            }
        }
        self.count += data.len() as u64;
    }

    /// The clipping threshold (symmetric range) for `method`.
    pub fn threshold(&self, method: Method) -> f32 {
        let absmax = self.min.abs().max(self.max.abs());
        if !absmax.is_finite() || self.range <= 0.0 {
            return absmax.max(0.0);
        }
        let w = self.range / BINS as f32;
        match method {
            Method::MinMax => absmax,
            Method::Percentile(p) => {
                let total: u64 = self.hist.iter().sum();
                let target = (total as f64 * p / 100.0).ceil() as u64;
                let mut cum = 0;
                for (i, c) in self.hist.iter().enumerate() {
                    cum += c;
                    if cum >= target {
                        return ((i + 1) as f32 * w).min(absmax);
                    }
                }
                absmax
            }
            Method::Entropy => (entropy_bins(&self.hist) as f32 + 0.5) * w,
        }
    }
}

/// TensorRT's KL-divergence search: the number of |x| bins to keep.
fn entropy_bins(hist: &[u64]) -> usize {
    let mut best = (f64::INFINITY, hist.len());
    for i in QUANT_BINS..=hist.len() {
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += hist[i..].iter().sum::<u64>() as f64;
        let merge = i as f64 / QUANT_BINS as f64;
        let mut q = vec![0f64; i];
        for b in 0..QUANT_BINS {
            let (start, end) = (
                (b as f64 * merge) as usize,
                (((b + 1) as f64 * merge) as usize).min(i),
            );
            let total: f64 = hist[start..end].iter().map(|&c| c as f64).sum();
            let nonzero = hist[start..end].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for j in start..end {
                    if hist[j] > 0 {
                        q[j] = total / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for (pj, qj) in p.iter().zip(&q) {
            if *pj > 0.0 {
                let (pn, qn) = (pj / ps, (qj / qs).max(1e-12));
                kl += pn * (pn / qn).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

/// The activations feeding every MatMul / Gemm / Conv whose weight is an
/// initializer: what static int8 quantises.
pub fn observed_tensors(g: &Graph) -> Vec<String> {
    let inits: HashSet<&str> = g.initializers.iter().map(|(n, _)| n.as_str()).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in &g.nodes {
        if matches!(
            n.op_type.as_str(),
            "MatMul" | "Gemm" | "Conv" | "MatMulNBits"
        ) && n.inputs.len() >= 2
            && inits.contains(n.inputs[1].as_str())
            && !inits.contains(n.inputs[0].as_str())
            && seen.insert(n.inputs[0].clone())
        {
            out.push(n.inputs[0].clone());
        }
    }
    out
}

/// The output name under which tensor `name` is observed.
pub fn observed_output(name: &str) -> String {
    format!("{name}.observed")
}

/// `g` with each of `names` copied (Identity) to an extra, shape-undeclared
/// float32 output named by [`observed_output`].
pub fn with_observers(g: &Graph, names: &[String]) -> Graph {
    let mut g = g.clone();
    for n in names {
        let out = observed_output(n);
        g.nodes.push(Node {
            name: out.clone(),
            op_type: "Identity".into(),
            domain: String::new(),
            inputs: vec![n.clone()],
            outputs: vec![out.clone()],
            attrs: vec![],
            keep_fp32: true,
        });
        g.outputs.push(IoSpec {
            name: out,
            dtype: DType::F32,
            dims: vec![],
        });
    }
    g
}

/// One tensor's calibrated range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
    /// The symmetric clipping threshold: the int8 scale is threshold / 127.
    pub threshold: f32,
    pub count: u64,
}

impl Range {
    pub fn scale(&self) -> f32 {
        (self.threshold / 127.0).max(1e-12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_method() {
        let mut s = Stats::default();
        let data: Vec<f32> = (0..10_000)
            .map(|i| ((i % 100) as f32 - 50.0) / 50.0)
            .collect();
        s.observe(&data);
        s.observe(&[8.0]);
        assert_eq!(s.threshold(Method::MinMax), 8.0);
        let p = s.threshold(Method::Percentile(99.0));
        assert!(p <= 1.01 && p > 0.9, "{p}");
        let e = s.threshold(Method::Entropy);
        assert!(e < 8.0 && e > 0.5, "the outlier is clipped: {e}");
        assert_eq!(s.count, 10_001);
    }
}
