//! Error-compensating weight quantisation (GPTQ: Frantar et al., 2022,
//! "Accurate Post-Training Quantization for Generative Pre-trained
//! Transformers").
//!
//! Round-to-nearest treats every weight alone. GPTQ quantises a MatMul's
//! weight one input channel `k` at a time and spreads each channel's rounding
//! error over the channels not yet quantised, weighted by how the inputs
//! co-vary on real data: the Hessian `H = XᵀX / rows` of the layer's
//! reconstruction error, collected from the activations that feed the MatMul
//! (`flamingo quantize --data`). The quantised layer then reproduces `X W` on
//! that data far better than rounding does, at the same storage.

use std::collections::HashMap;

use ndarray::ArrayD;

/// `XᵀX` over the rows of every observed value of one activation `[.., K]`.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub k: usize,
    /// `[K, K]`, row-major; the sum over rows (divided out in [`Self::factor`]).
    sum: Vec<f64>,
    pub rows: u64,
}

/// Per activation name (the MatMul's data input): its Hessian.
pub type Hessians = HashMap<String, Hessian>;

impl Hessian {
    pub fn new(k: usize) -> Self {
        Hessian {
            k,
            sum: vec![0.0; k * k],
            rows: 0,
        }
    }

    /// Adds every row of `x` (last axis `K`); other shapes are ignored.
    pub fn add(&mut self, x: &ArrayD<f32>) {
        let k = self.k;
        if x.ndim() == 0 || x.shape()[x.ndim() - 1] != k {
            return;
        }
        let flat: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for row in flat.chunks_exact(k) {
            if row.iter().any(|v| !v.is_finite()) {
                continue;
            }
            for (i, &a) in row.iter().enumerate().filter(|(_, a)| **a != 0.0) {
                let dst = &mut self.sum[i * k..(i + 1) * k];
                for (d, &b) in dst.iter_mut().zip(row) {
                    *d += a * b;
                }
            }
            self.rows += 1;
        }
    }

    /// `H = XᵀX / rows`, row-major `[K, K]`.
    pub fn normalized(&self) -> Vec<f64> {
        let n = self.rows.max(1) as f64;
        self.sum.iter().map(|v| v / n).collect()
    }

    /// The upper Cholesky factor `U` of `(H + λI)⁻¹` (`λ` = `damp` × the mean
    /// diagonal), row-major `[K, K]`, and which inputs were never non-zero
    /// (their weights do not matter and are quantised as zero).
    pub fn factor(&self, damp: f64) -> Option<(Vec<f64>, Vec<bool>)> {
        let k = self.k;
        if self.rows == 0 {
            return None;
        }
        let mut h: Vec<f64> = self.sum.iter().map(|v| v / self.rows as f64).collect();
        let dead: Vec<bool> = (0..k).map(|i| h[i * k + i] == 0.0).collect();
        for i in 0..k {
            if dead[i] {
                h[i * k + i] = 1.0;
            }
        }
        let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        for i in 0..k {
            h[i * k + i] += damp * mean;
        }
        let l = cholesky(&h, k)?;
        let li = lower_inverse(&l, k);
        // H⁻¹ = L⁻ᵀ L⁻¹
        let mut hinv = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..=i {
                let s: f64 = (i..k).map(|r| li[r * k + i] * li[r * k + j]).sum();
                hinv[i * k + j] = s;
                hinv[j * k + i] = s;
            }
        }
        let c = cholesky(&hinv, k)?;
        // U = Cᵀ
        let mut u = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..=i {
                u[j * k + i] = c[i * k + j];
            }
        }
        Some((u, dead))
    }
}

/// Lower Cholesky factor of a symmetric positive definite `[k, k]` matrix.
fn cholesky(a: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let s: f64 = (0..j).map(|p| l[i * k + p] * l[j * k + p]).sum();
            if i == j {
                let d = a[i * k + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * k + i] = d.sqrt();
            } else {
                l[i * k + j] = (a[i * k + j] - s) / l[j * k + j];
            }
        }
    }
    Some(l)
}

/// Inverse of a lower-triangular `[k, k]` matrix.
fn lower_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let mut inv = vec![0.0; k * k];
    for j in 0..k {
        inv[j * k + j] = 1.0 / l[j * k + j];
        for i in j + 1..k {
            let s: f64 = (j..i).map(|p| l[i * k + p] * inv[p * k + j]).sum();
            inv[i * k + j] = -s / l[i * k + i];
        }
    }
    inv
}

/// What GPTQ needs to quantise one weight.
pub struct Compensation {
    /// `H` (for [`refit_scales`]).
    pub h: Vec<f64>,
    /// The upper Cholesky factor of the damped `H⁻¹`.
    pub u: Vec<f64>,
    /// Inputs that were never non-zero.
    pub dead: Vec<bool>,
}

impl Compensation {
    /// GPTQ's compensation for `h`, damped by `damp` × its mean diagonal.
    pub fn new(h: &Hessian, damp: f64) -> Option<Self> {
        let (u, dead) = h.factor(damp)?;
        Some(Compensation {
            h: h.normalized(),
            u,
            dead,
        })
    }
}

/// Quantises `row` (one output channel, `K` inputs, zero-padded to whole
/// blocks) block by block: `params` picks a block's quantiser from its
/// values, `quant` maps a value to its dequantized grid point. With `comp`,
/// each input's rounding error is spread over the inputs not yet quantised.
/// Returns the dequantized row and each block's parameters.
pub fn quantize_row<P: Copy>(
    row: &mut [f64],
    k: usize,
    bs: usize,
    comp: Option<&Compensation>,
    params: impl Fn(&[f32]) -> P,
    quant: impl Fn(f32, P) -> f32,
) -> Vec<P> {
    if let Some(c) = comp {
        for (v, d) in row.iter_mut().zip(&c.dead) {
            if *d {
                *v = 0.0;
            }
        }
    }
    let blocks = row.len() / bs;
    let mut out = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let vals: Vec<f32> = row[b * bs..(b + 1) * bs]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let bp = params(&vals);
        out.push(bp);
        for i in b * bs..(b + 1) * bs {
            let deq = quant(row[i] as f32, bp) as f64;
            let err = row[i] - deq;
            row[i] = deq;
            if let (Some(c), true) = (comp, i < k) {
                let e = err / c.u[i * k + i];
                let urow = &c.u[i * k + i + 1..(i + 1) * k];
                for (r, u) in row[i + 1..k].iter_mut().zip(urow) {
                    *r -= e * u;
                }
            }
        }
    }
    out
}

/// With the codes fixed, the per-block scales that minimise the layer's
/// output error on the calibration data, `(w - ŵ)ᵀ H (w - ŵ)` with
/// `ŵᵢ = scale_b(i) · cᵢ` (`cᵢ` = code - zero point): a small linear least
/// squares over the row's blocks. `None` when it is singular or a scale would
/// not be positive (the GPTQ scales are then kept).
pub fn refit_scales(
    w: &[f64],
    centred: &[f64],
    h: &[f64],
    k: usize,
    bs: usize,
) -> Option<Vec<f64>> {
    let nb = k.div_ceil(bs);
    let mut a = vec![0.0; nb * nb];
    let mut rhs = vec![0.0; nb];
    for i in 0..k {
        let (bi, ci) = (i / bs, centred[i]);
        if ci == 0.0 {
            continue;
        }
        let hrow = &h[i * k..(i + 1) * k];
        rhs[bi] += ci * hrow.iter().zip(&w[..k]).map(|(x, y)| x * y).sum::<f64>();
        for j in 0..k {
            a[bi * nb + j / bs] += ci * hrow[j] * centred[j];
        }
    }
    let l = cholesky(&a, nb)?;
    // solve L y = rhs, Lᵀ x = y
    let mut y = vec![0.0; nb];
    for i in 0..nb {
        y[i] = (rhs[i] - (0..i).map(|p| l[i * nb + p] * y[p]).sum::<f64>()) / l[i * nb + i];
    }
    let mut x = vec![0.0; nb];
    for i in (0..nb).rev() {
        x[i] = (y[i] - (i + 1..nb).map(|p| l[p * nb + i] * x[p]).sum::<f64>()) / l[i * nb + i];
    }
    x.iter().all(|v| *v > 0.0 && v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn the_factor_is_the_upper_cholesky_of_the_inverse() {
        let k = 5;
        let mut seed = 7;
        let x = ArrayD::from_shape_vec(
            vec![40, k],
            (0..40 * k).map(|_| lcg(&mut seed) as f32).collect(),
        )
        .unwrap();
        let mut h = Hessian::new(k);
        h.add(&x);
        let (u, dead) = h.factor(0.0).unwrap();
        assert!(dead.iter().all(|d| !d));
        // Uᵀ U (H/rows) = I
        let hm: Vec<f64> = h.sum.iter().map(|v| v / 40.0).collect();
        let inv = |i: usize, j: usize| (0..k).map(|p| u[p * k + i] * u[p * k + j]).sum::<f64>();
        for i in 0..k {
            for j in 0..k {
                let prod: f64 = (0..k).map(|p| inv(i, p) * hm[p * k + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((prod - want).abs() < 1e-9, "{i},{j}: {prod}");
            }
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "upper triangular");
            }
        }
    }

    #[test]
    fn compensation_beats_rounding_on_correlated_inputs() {
        // inputs with a strong common component: errors can cancel
        let (k, rows) = (16, 400);
        let mut seed = 3;
        let mut xs = Vec::new();
        for _ in 0..rows {
            let common = lcg(&mut seed);
            for _ in 0..k {
                xs.push((common + 0.3 * lcg(&mut seed)) as f32);
            }
        }
        let x = ArrayD::from_shape_vec(vec![rows, k], xs.clone()).unwrap();
        let mut h = Hessian::new(k);
        h.add(&x);
        let (u, dead) = h.factor(0.01).unwrap();
        let comp = Compensation {
            h: h.normalized(),
            u,
            dead,
        };
        let w: Vec<f64> = (0..k).map(|_| lcg(&mut seed)).collect();
        // a coarse uniform grid (step 0.25) stands in for 4 bits
        let q = |v: f32, s: f32| (v / s).round() * s;
        let out_err = |wq: &[f64]| -> f64 {
            xs.chunks(k)
                .map(|r| {
                    let d: f64 = r
                        .iter()
                        .zip(w.iter().zip(wq))
                        .map(|(x, (a, b))| *x as f64 * (a - b))
                        .sum();
                    d * d
                })
                .sum()
        };
        let mut rtn = w.clone();
        quantize_row(&mut rtn, k, k, None, |_| 0.25f32, q);
        let mut gptq = w.clone();
        quantize_row(&mut gptq, k, k, Some(&comp), |_| 0.25f32, q);
        assert!(
            out_err(&gptq) < 0.5 * out_err(&rtn),
            "{} vs {}",
            out_err(&gptq),
            out_err(&rtn)
        );
    }
}
