//! Weight-only int8 matrix products: this runtime's own CPU kernel, run by
//! ONNX Runtime as the custom operator `ai.flamingo.MatMulInt8` (see
//! [`crate::ort_backend`], which registers it in every session).
//!
//! `Y[m, n] = scale[n] · Σₖ A[m, k] · Q[n, k]`: per-output-channel int8
//! weights `Q`, float32 activations and accumulation. Nothing but the
//! weights is quantised, so the result equals a float32 `MatMul` with the
//! dequantised weights up to summation order.
//!
//! A decode step reads every weight once; ONNX Runtime's int8
//! `MatMulNBits` kernel is compute-bound on AVX2 without VNNI, this one
//! streams the weights at close to the memory bandwidth: the weights of
//! 8 output channels are interleaved per 8 `k` ([`pack`], the layout in
//! `flamingo_graphs::kernels`), so each thread
//! reads one contiguous stream, and an 8-wide widening + FMA per 8 weights
//! keeps up with memory. Several rows (a batch, a prompt) go four at a
//! time over chunks of a tile that stay in L1, each weight widened once per
//! four rows.
//!
//! Inputs: `A` float32 `[..., K]`; `B` int8 `[⌈N/8⌉, ⌈K/8⌉, 8, 8]`
//! ([`pack`]); `scales` float32 `[N]`. Attributes `K`, `N`. Output float32
//! `[..., N]`.

pub use flamingo_graphs::kernels::int8::{check, pack, packed_shape, DOMAIN, KSTEP, OP, TILE};

/// Tiles per parallel task.
const TASK_TILES: usize = 16;

/// `Y` (`[m, n]`, row-major) shared by a product's tasks, each of which
/// writes the columns of its own tiles (`TASK_TILES` tiles of 8 channels).
pub(crate) struct Output<'a> {
    y: *mut f32,
    n: usize,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

// Tasks write disjoint columns of `y`.
unsafe impl Sync for Output<'_> {}
unsafe impl Send for Output<'_> {}

impl<'a> Output<'a> {
    /// `y` holds `m · n` values.
    pub(crate) fn new(y: &'a mut [f32], n: usize) -> Output<'a> {
        Output {
            y: y.as_mut_ptr(),
            n,
            _y: std::marker::PhantomData,
        }
    }

    /// Number of tasks.
    pub(crate) fn tasks(&self) -> usize {
        self.n.div_ceil(TILE).div_ceil(TASK_TILES)
    }

    /// The tiles of task `i`.
    pub(crate) fn task_tiles(&self, i: usize) -> std::ops::Range<usize> {
        let tiles = self.n.div_ceil(TILE);
        (i * TASK_TILES).min(tiles)..((i + 1) * TASK_TILES).min(tiles)
    }

    /// Writes `v` (tile `t`'s channels, times `scales[channel]` if given)
    /// to row `r`; `r` must be below `m` and tile `t` the calling task's.
    pub(crate) fn store(&self, r: usize, t: usize, v: &[f32; TILE], scales: Option<&[f32]>) {
        let c0 = t * TILE;
        for (c, x) in v.iter().enumerate().take(self.n.saturating_sub(c0)) {
            let x = scales.map_or(*x, |s| x * s[c0 + c]);
            // SAFETY: in bounds (`r < m`, `c0 + c < n`); tasks own disjoint tiles
            unsafe { *self.y.add(r * self.n + c0 + c) = x };
        }
    }
}

/// One product, split into tasks that write disjoint columns of `Y`.
pub struct Product<'a> {
    a: &'a [f32],
    /// `A` with rows padded to a multiple of 8 (when `k` is not)
    padded: Option<Vec<f32>>,
    m: usize,
    k: usize,
    b: &'a [i8],
    scales: &'a [f32],
    y: Output<'a>,
}

impl<'a> Product<'a> {
    /// `y` must hold `m · n` values and outlive the product; operands as
    /// checked by [`check`].
    pub fn new(
        a: &'a [f32],
        k: usize,
        b: &'a [i8],
        scales: &'a [f32],
        n: usize,
        y: &'a mut [f32],
    ) -> Result<Product<'a>, String> {
        let m = check(a.len(), k, b.len(), scales.len(), n)?;
        if y.len() != m * n {
            return Err(format!(
                "{OP}: output of {} values, expected {}",
                y.len(),
                m * n
            ));
        }
        let kp = k.div_ceil(KSTEP) * KSTEP;
        let padded = (kp != k).then(|| {
            let mut p = vec![0f32; m * kp];
            for (dst, src) in p.chunks_exact_mut(kp).zip(a.chunks_exact(k)) {
                dst[..k].copy_from_slice(src);
            }
            p
        });
        Ok(Product {
            a,
            padded,
            m,
            k,
            b,
            scales,
            y: Output::new(y, n),
        })
    }

    /// Number of tasks.
    pub fn tasks(&self) -> usize {
        self.y.tasks()
    }

    /// Runs task `i` (each exactly once, in any order or concurrently).
    pub fn run(&self, i: usize) {
        let tiles = self.y.task_tiles(i);
        if !tiles.is_empty() {
            self.gemv(tiles.start, tiles.end);
        }
    }

    /// Runs every task on this thread.
    pub fn run_all(&self) {
        for i in 0..self.tasks() {
            self.run(i);
        }
    }

    fn steps(&self) -> usize {
        self.k.div_ceil(KSTEP)
    }

    fn tile(&self, t: usize) -> &[i8] {
        let len = self.steps() * TILE * KSTEP;
        &self.b[t * len..(t + 1) * len]
    }

    /// Writes `v` (tile `t`'s channels) to row `r` of `Y`, scaled.
    fn store(&self, r: usize, t: usize, v: &[f32; TILE]) {
        self.y.store(r, t, v, Some(self.scales));
    }

    /// Tiles `t0..t1`, every row.
    fn gemv(&self, t0: usize, t1: usize) {
        let kp = self.steps() * KSTEP;
        let a = self.padded.as_deref().unwrap_or(self.a);
        let row = |r: usize| &a[r * kp..(r + 1) * kp];
        for t in t0..t1 {
            let w = self.tile(t);
            let mut r = 0;
            while r + 4 <= self.m {
                let out = dot4(w, [row(r), row(r + 1), row(r + 2), row(r + 3)]);
                for (j, v) in out.iter().enumerate() {
                    self.store(r + j, t, v);
                }
                r += 4;
            }
            for r in r..self.m {
                self.store(r, t, &dot1(w, row(r)));
            }
        }
    }
}

/// The 8 channels of tile `w` against one row `x` (padded to the steps).
fn dot1(w: &[i8], x: &[f32]) -> [f32; TILE] {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA are present; slices hold `steps` steps
        return unsafe { x86::dot1(w, x) };
    }
    let mut out = [0f32; TILE];
    for (s, xs) in x.chunks_exact(KSTEP).enumerate() {
        for (c, o) in out.iter_mut().enumerate() {
            let ws = &w[(s * TILE + c) * KSTEP..][..KSTEP];
            *o += ws.iter().zip(xs).map(|(q, v)| *q as f32 * v).sum::<f32>();
        }
    }
    out
}

/// The 8 channels of tile `w` against four rows.
fn dot4(w: &[i8], x: [&[f32]; 4]) -> [[f32; TILE]; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in `dot1`
        return unsafe { x86::dot4(w, x) };
    }
    x.map(|r| dot1(w, r))
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KSTEP, TILE};
    use std::arch::x86_64::*;

    /// Bytes ahead of the stream to prefetch.
    const AHEAD: usize = 4096;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
        _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)))
    }

    /// 8 int8 at `p` → 8 floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot1(w: &[i8], x: &[f32]) -> [f32; TILE] {
        let steps = x.len() / KSTEP;
        debug_assert!(w.len() >= steps * TILE * KSTEP);
        let mut acc = [_mm256_setzero_ps(); TILE];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        for s in 0..steps {
            let xv = _mm256_loadu_ps(xp.add(s * KSTEP));
            let q = wp.add(s * TILE * KSTEP);
            // the next tiles follow this one; a prefetch never faults
            _mm_prefetch(q.wrapping_add(AHEAD), _MM_HINT_T0);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(widen(q.add(c * KSTEP)), xv, *a);
            }
        }
        let mut out = [0f32; TILE];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }

    /// Steps per chunk of `dot4`: the rows' and the tile's chunk stay in L1.
    const CHUNK: usize = 32;

    /// Two channels at a time against four rows (8 accumulators), over
    /// chunks of `k` that stay in L1.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4(w: &[i8], x: [&[f32]; 4]) -> [[f32; TILE]; 4] {
        let steps = x[0].len() / KSTEP;
        debug_assert!(w.len() >= steps * TILE * KSTEP);
        let wp = w.as_ptr();
        let xp = x.map(|r| r.as_ptr());
        // [pair][row][channel of the pair]
        let mut acc = [[[_mm256_setzero_ps(); 2]; 4]; TILE / 2];
        let mut s0 = 0;
        while s0 < steps {
            let s1 = (s0 + CHUNK).min(steps);
            for (p, pacc) in acc.iter_mut().enumerate() {
                let mut a = *pacc;
                for s in s0..s1 {
                    if p == 0 {
                        _mm_prefetch(wp.add(s * TILE * KSTEP).wrapping_add(AHEAD), _MM_HINT_T0);
                    }
                    let q = wp.add((s * TILE + 2 * p) * KSTEP);
                    let w0 = widen(q);
                    let w1 = widen(q.add(KSTEP));
                    for (r, a) in a.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp[r].add(s * KSTEP));
                        a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                        a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
                    }
                }
                *pacc = a;
            }
            s0 = s1;
        }
        let mut out = [[0f32; TILE]; 4];
        for (p, pacc) in acc.iter().enumerate() {
            for (o, a) in out.iter_mut().zip(pacc) {
                o[2 * p] = hsum(a[0]);
                o[2 * p + 1] = hsum(a[1]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Y = A · (Q·s)ᵀ` in f64.
    fn naive(a: &[f32], m: usize, k: usize, q: &[i8], s: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let d: f64 = (0..k)
                    .map(|i| a[r * k + i] as f64 * q[c * k + i] as f64)
                    .sum();
                y[r * n + c] = (d * s[c] as f64) as f32;
            }
        }
        y
    }

    #[test]
    fn every_path_equals_the_dequantised_product() {
        // 1 to 21 rows (the 4-row kernel and the single-row remainder), k
        // and n not multiples of 8, chunks of k past the first, several tasks
        for &(m, k, n) in &[
            (1, 40, 24),
            (3, 37, 19),
            (4, 64, 200),
            (7, 300, 77),
            (5, 16, 300),
            (16, 37, 19),
            (21, 72, 150),
            (9, 8, 8),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 201) as f32 - 100.0) / 50.0)
                .collect();
            let q: Vec<i8> = (0..n * k)
                .map(|i| ((i * 104729 % 255) as i32 - 127) as i8)
                .collect();
            let s: Vec<f32> = (0..n).map(|c| 0.001 + c as f32 * 1e-4).collect();
            let b = pack(&q, n, k);
            let mut y = vec![f32::NAN; m * n];
            Product::new(&a, k, &b, &s, n, &mut y).unwrap().run_all();
            let want = naive(&a, m, k, &q, &s, n);
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "m {m} k {k} n {n} [{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn misshapen_operands_are_errors() {
        let b = pack(&[1i8; 16], 2, 8);
        let mut y = vec![0f32; 2];
        assert!(Product::new(&[0.0; 7], 8, &b, &[1.0; 2], 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 8], 8, &b[1..], &[1.0; 2], 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 8], 8, &b, &[1.0; 3], 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 8], 8, &b, &[1.0; 2], 2, &mut y).is_ok());
    }
}
