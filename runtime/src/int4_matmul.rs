//! Blockwise int4 matrix products: this runtime's own CPU kernel, run by
//! ONNX Runtime as the custom operator `ai.flamingo.MatMulInt4` (registered
//! with [`crate::int8_matmul`]'s in every session of [`crate::ort_backend`]).
//!
//! `Y[m, n] = Σ_b s[n, b / (bs/32)] · sa[m, b] · Σ_{k ∈ b} (Q[n, k] − 8) ·
//! qa[m, k]` over blocks `b` of 32 `k`: symmetric 4-bit weight codes `Q`
//! (0..15, zero point 8) with a float32 scale per block of `bs` `k` (32,
//! 64, 128, ...); the activations are quantised per row and block of 32 to
//! int8 (`qa`, scale `sa`, rounded to nearest even), as ONNX Runtime's
//! `MatMulNBits` does at `accuracy_level` 4. Block sums are exact integers;
//! the blocks are summed in float32.
//!
//! On AVX2 one `vpmaddubsw` multiplies 32 weights (8 output channels × 4
//! `k`, [`pack`]) by 4 activation bytes broadcast to every channel, so the
//! channels stay in separate lanes and a block of 8 channels × 32 `k` ends
//! in one `vpmaddwd`, one conversion and one FMA: no horizontal sums.
//! Weights unpack with a shift and two masks per 64. Rows (a batch, a
//! prompt) go four at a time over each tile, each weight unpacked once per
//! four rows.
//!
//! Inputs: `A` float32 `[..., K]`; `B` uint8 `[⌈N/8⌉, ⌈K/32⌉, 128]`
//! ([`pack`]); `scales` float32 `[⌈N/8⌉, ⌈K/bs⌉, 8]` ([`pack_scales`]).
//! Attributes `K`, `N`, `block_size` (`bs`, a multiple of 32; default 32).
//! Output float32 `[..., N]`.

use crate::int8_matmul::Output;
pub use flamingo_graphs::kernels::int4::{
    check, pack, pack_scales, packed_shape, scales_shape, BLOCK, DOMAIN, OP, TILE, TILE_BLOCK_BYTES,
};

/// `A`'s rows quantised per block of 32.
struct Rows {
    /// int8 codes, rows padded to whole blocks
    q: Vec<i8>,
    /// per row and block: the scale
    scale: Vec<f32>,
    /// per row and block: 8 · Σ codes (the weights' zero point times the sum)
    sum8: Vec<i32>,
}

impl Rows {
    fn new(a: &[f32], m: usize, k: usize) -> Rows {
        let blocks = k.div_ceil(BLOCK);
        let mut rows = Rows {
            q: vec![0; m * blocks * BLOCK],
            scale: vec![0.0; m * blocks],
            sum8: vec![0; m * blocks],
        };
        let mut buf = [0f32; BLOCK];
        for r in 0..m {
            for b in 0..blocks {
                let src = &a[r * k + b * BLOCK..r * k + ((b + 1) * BLOCK).min(k)];
                buf[..src.len()].copy_from_slice(src);
                buf[src.len()..].fill(0.0);
                let at = (r * blocks + b) * BLOCK;
                let dst: &mut [i8; BLOCK] = (&mut rows.q[at..at + BLOCK])
                    .try_into()
                    .expect("a block is BLOCK codes");
                let (s, sum) = quantize_block(&buf, dst);
                rows.scale[r * blocks + b] = s;
                rows.sum8[r * blocks + b] = 8 * sum;
            }
        }
        rows
    }
}

/// One block of activations → int8 codes `round(v · 127 / max |v|)` (ties
/// to even); returns the scale `max |v| / 127` and the codes' sum. A block
/// with a non-finite value gets a NaN scale (and zero codes): NaN and
/// infinities reach the output as NaN.
fn quantize_block(v: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if crate::int8_matmul::avx2() {
        // SAFETY: AVX2 is present
        return unsafe { x86::quantize_block(v, q) };
    }
    if v.iter().any(|x| !x.is_finite()) {
        q.fill(0);
        return (f32::NAN, 0);
    }
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if amax == 0.0 {
        q.fill(0);
        return (0.0, 0);
    }
    let inv = 127.0 / amax;
    let mut sum = 0;
    for (d, x) in q.iter_mut().zip(v) {
        let c = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i32;
        *d = c as i8;
        sum += c;
    }
    (amax / 127.0, sum)
}

/// One product, split into tasks that write disjoint columns of `Y`.
pub struct Product<'a> {
    rows: Rows,
    m: usize,
    blocks: usize,
    /// blocks of 32 per scale block
    per: usize,
    b: &'a [u8],
    scales: &'a [f32],
    y: Output<'a>,
}

impl<'a> Product<'a> {
    /// `y` must hold `m · n` values; operands as checked by [`check`],
    /// scales in blocks of `bs`.
    pub fn new(
        a: &[f32],
        k: usize,
        b: &'a [u8],
        (scales, bs): (&'a [f32], usize),
        n: usize,
        y: &'a mut [f32],
    ) -> Result<Product<'a>, String> {
        let m = check(a.len(), k, b.len(), (scales.len(), bs), n)?;
        if y.len() != m * n {
            return Err(format!(
                "{OP}: output of {} values, expected {}",
                y.len(),
                m * n
            ));
        }
        Ok(Product {
            rows: Rows::new(a, m, k),
            m,
            blocks: k.div_ceil(BLOCK),
            per: bs / BLOCK,
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
        for t in self.y.task_tiles(i) {
            self.tile(t);
        }
    }

    /// Runs every task on this thread.
    pub fn run_all(&self) {
        for i in 0..self.tasks() {
            self.run(i);
        }
    }

    fn row(&self, r: usize) -> Row<'_> {
        let nb = self.blocks;
        Row {
            q: &self.rows.q[r * nb * BLOCK..(r + 1) * nb * BLOCK],
            scale: &self.rows.scale[r * nb..(r + 1) * nb],
            sum8: &self.rows.sum8[r * nb..(r + 1) * nb],
        }
    }

    /// Tile `t`, every row.
    fn tile(&self, t: usize) {
        let (w, s) = self.tile_operands(t);
        let mut r = 0;
        while r + 4 <= self.m {
            let rows = [
                self.row(r),
                self.row(r + 1),
                self.row(r + 2),
                self.row(r + 3),
            ];
            for (j, v) in dot4(w, s, &rows).iter().enumerate() {
                self.y.store(r + j, t, v, None);
            }
            r += 4;
        }
        for r in r..self.m {
            self.y.store(r, t, &dot1(w, s, &self.row(r)), None);
        }
    }

    /// Tile `t`'s packed weights and scales.
    fn tile_operands(&self, t: usize) -> (&[u8], Scales<'_>) {
        let nb = self.blocks;
        let sb = nb.div_ceil(self.per);
        (
            &self.b[t * nb * TILE_BLOCK_BYTES..(t + 1) * nb * TILE_BLOCK_BYTES],
            Scales {
                s: &self.scales[t * sb * TILE..(t + 1) * sb * TILE],
                per: self.per,
            },
        )
    }
}

/// One tile's weight scales: `s[(b / per) · 8 + c]` for block `b` of 32,
/// channel `c`.
#[derive(Clone, Copy)]
struct Scales<'a> {
    s: &'a [f32],
    per: usize,
}

impl Scales<'_> {
    fn block(&self, b: usize) -> &[f32] {
        &self.s[(b / self.per) * TILE..][..TILE]
    }
}

/// One quantised row of `A`.
struct Row<'a> {
    q: &'a [i8],
    scale: &'a [f32],
    sum8: &'a [i32],
}

/// Tile `w` (scales `s`) against one row.
fn dot1(w: &[u8], s: Scales, x: &Row) -> [f32; TILE] {
    #[cfg(target_arch = "x86_64")]
    if crate::int8_matmul::avx2() {
        // SAFETY: AVX2 and FMA are present; slices hold the tile's blocks
        return unsafe { x86::dot::<1>(w, s, [x]) }[0];
    }
    scalar(w, s, x)
}

/// Tile `w` against four rows.
fn dot4(w: &[u8], s: Scales, x: &[Row; 4]) -> [[f32; TILE]; 4] {
    #[cfg(target_arch = "x86_64")]
    if crate::int8_matmul::avx2() {
        // SAFETY: as in `dot1`
        return unsafe { x86::dot::<4>(w, s, [&x[0], &x[1], &x[2], &x[3]]) };
    }
    [0, 1, 2, 3].map(|r| scalar(w, s, &x[r]))
}

/// The same integer block sums and float32 operations as the AVX2 kernel.
fn scalar(w: &[u8], s: Scales, x: &Row) -> [f32; TILE] {
    let mut out = [0f32; TILE];
    for (b, wb) in w.chunks_exact(TILE_BLOCK_BYTES).enumerate() {
        let sb = s.block(b);
        let xb = &x.q[b * BLOCK..(b + 1) * BLOCK];
        for (c, o) in out.iter_mut().enumerate() {
            let mut acc = 0i32;
            for step in 0..BLOCK / 8 {
                for j in 0..4 {
                    let byte = wb[step * 32 + c * 4 + j];
                    acc += (byte & 15) as i32 * xb[step * 8 + j] as i32;
                    acc += (byte >> 4) as i32 * xb[step * 8 + 4 + j] as i32;
                }
            }
            let scale = sb[c] * x.scale[b];
            *o = ((acc - x.sum8[b]) as f32).mul_add(scale, *o);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Row, Scales, BLOCK, TILE, TILE_BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// [`super::quantize_block`]: the same products, rounded to nearest
    /// even by `vcvtps2dq`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_block(v: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
        let x = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(v.as_ptr().add(i)));
        let sign = _mm256_set1_ps(-0.0);
        let abs = x.map(|x| _mm256_andnot_ps(sign, x));
        // NaN or ±inf anywhere
        let inf = _mm256_set1_ps(f32::INFINITY);
        let bad = abs.iter().fold(0, |m, a| {
            m | _mm256_movemask_ps(_mm256_cmp_ps(*a, inf, _CMP_NLT_UQ))
        });
        if bad != 0 {
            *q = [0; BLOCK];
            return (f32::NAN, 0);
        }
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        if amax == 0.0 {
            *q = [0; BLOCK];
            return (0.0, 0);
        }
        let inv = _mm256_set1_ps(127.0 / amax);
        let c = x.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, inv)));
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(c[0], c[1]),
            _mm256_packs_epi32(c[2], c[3]),
        );
        // the packs interleave 128-bit lanes: dwords back in order
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256(
            q.as_mut_ptr() as *mut __m256i,
            _mm256_permutevar8x32_epi32(packed, order),
        );
        let s = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        (amax / 127.0, _mm_cvtsi128_si32(s))
    }

    /// Bytes ahead of the stream to prefetch.
    const AHEAD: usize = 2048;

    /// Tile `w` against `R` rows: per block and row, one 16-bit
    /// accumulator per channel pair of lanes (8 products of at most
    /// 2 · 15 · 127 each: no overflow), then `vpmaddwd` into the
    /// channels' 32-bit lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot<const R: usize>(w: &[u8], s: Scales, x: [&Row; R]) -> [[f32; TILE]; R] {
        let blocks = w.len() / TILE_BLOCK_BYTES;
        debug_assert!(s.s.len() >= blocks.div_ceil(s.per) * TILE);
        debug_assert!(w.len() >= blocks * TILE_BLOCK_BYTES);
        debug_assert!(x.iter().all(|r| r.q.len() >= blocks * BLOCK));
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut total = [_mm256_setzero_ps(); R];
        let wp = w.as_ptr();
        for b in 0..blocks {
            let q = wp.add(b * TILE_BLOCK_BYTES);
            // the next tiles follow this one; a prefetch never faults
            _mm_prefetch(q.wrapping_add(AHEAD) as *const i8, _MM_HINT_T0);
            _mm_prefetch(q.wrapping_add(AHEAD + 64) as *const i8, _MM_HINT_T0);
            let mut acc = [_mm256_setzero_si256(); R];
            for step in 0..BLOCK / 8 {
                let v = _mm256_loadu_si256(q.add(step * 32) as *const __m256i);
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                for (a, row) in acc.iter_mut().zip(&x) {
                    let xp = row.q.as_ptr().add(b * BLOCK + step * 8);
                    let xlo = _mm256_set1_epi32((xp as *const i32).read_unaligned());
                    let xhi = _mm256_set1_epi32((xp.add(4) as *const i32).read_unaligned());
                    *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(lo, xlo));
                    *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(hi, xhi));
                }
            }
            let sw = _mm256_loadu_ps(s.s.as_ptr().add((b / s.per) * TILE));
            for ((t, a), row) in total.iter_mut().zip(acc).zip(&x) {
                let sums = _mm256_sub_epi32(
                    _mm256_madd_epi16(a, ones),
                    _mm256_set1_epi32(*row.sum8.get_unchecked(b)),
                );
                let scale = _mm256_mul_ps(sw, _mm256_set1_ps(*row.scale.get_unchecked(b)));
                *t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, *t);
            }
        }
        let mut out = [[0f32; TILE]; R];
        for (o, t) in out.iter_mut().zip(total) {
            _mm256_storeu_ps(o.as_mut_ptr(), t);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Y` from the definition, in f64, over `A` quantised as the kernel
    /// does; scales `[n, ⌈k/bs⌉]`.
    fn naive(
        a: &[f32],
        m: usize,
        k: usize,
        q: &[u8],
        (s, bs): (&[f32], usize),
        n: usize,
    ) -> Vec<f32> {
        let rows = Rows::new(a, m, k);
        let nb = k.div_ceil(BLOCK);
        let sb = k.div_ceil(bs);
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut d = 0f64;
                for b in 0..nb {
                    let ints: i64 = (b * BLOCK..((b + 1) * BLOCK).min(k))
                        .map(|i| (q[c * k + i] as i64 - 8) * rows.q[(r * nb) * BLOCK + i] as i64)
                        .sum();
                    let sw = s[c * sb + b * BLOCK / bs] as f64;
                    d += ints as f64 * sw * rows.scale[r * nb + b] as f64;
                }
                y[r * n + c] = d as f32;
            }
        }
        y
    }

    fn case(m: usize, k: usize, n: usize, bs: usize) -> (Vec<f32>, Vec<u8>, Vec<f32>) {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 201) as f32 - 100.0) / 50.0)
            .collect();
        let q: Vec<u8> = (0..n * k).map(|i| (i * 104729 % 16) as u8).collect();
        let s: Vec<f32> = (0..n * k.div_ceil(bs))
            .map(|c| 0.001 + (c % 97) as f32 * 1e-4)
            .collect();
        (a, q, s)
    }

    #[test]
    fn every_path_equals_the_definition() {
        // 1 to 21 rows (the 4-row kernel and the single-row remainder), k
        // and n not multiples of the blocks and tile, several tasks, scale
        // blocks of 32 to 128
        for &(m, k, n, bs) in &[
            (1, 64, 24, 32),
            (3, 37, 19, 32),
            (4, 96, 200, 64),
            (7, 300, 77, 128),
            (5, 32, 300, 32),
            (21, 72, 150, 64),
            (9, 8, 8, 128),
            (2, 256, 16, 128),
        ] {
            let (a, q, s) = case(m, k, n, bs);
            let (b, sp) = (pack(&q, n, k), pack_scales(&s, n, k, bs));
            let mut y = vec![f32::NAN; m * n];
            Product::new(&a, k, &b, (&sp, bs), n, &mut y)
                .unwrap()
                .run_all();
            let want = naive(&a, m, k, &q, (&s, bs), n);
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "m {m} k {k} n {n} [{i}]: {g} vs {w}"
                );
            }
            // the portable path gives the same bits
            let p = Product::new(&a, k, &b, (&sp, bs), n, &mut y).unwrap();
            for t in 0..n.div_ceil(TILE) {
                let (w, sc) = p.tile_operands(t);
                for r in 0..m {
                    assert_eq!(dot1(w, sc, &p.row(r)), scalar(w, sc, &p.row(r)));
                }
            }
        }
    }

    #[test]
    fn activations_round_to_within_half_a_step() {
        let v: [f32; BLOCK] = std::array::from_fn(|i| (i as f32 - 13.5) * 0.37);
        let mut q = [0i8; BLOCK];
        let (s, sum) = quantize_block(&v, &mut q);
        assert_eq!(s, (31.0 - 13.5) * 0.37 / 127.0);
        assert_eq!(q[31], 127);
        assert_eq!(sum, q.iter().map(|c| *c as i32).sum::<i32>());
        for (x, c) in v.iter().zip(q) {
            assert!((c as f32 * s - x).abs() <= s * 0.5 + 1e-6);
        }
        assert_eq!(quantize_block(&[0.0; BLOCK], &mut q), (0.0, 0));
        let mut bad = v;
        bad[7] = f32::NAN;
        assert!(quantize_block(&bad, &mut q).0.is_nan());
        bad[7] = f32::NEG_INFINITY;
        assert!(quantize_block(&bad, &mut q).0.is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_quantiser_equals_the_portable_one() {
        if !crate::int8_matmul::avx2() {
            return;
        }
        for seed in 0..200usize {
            // ties (.5 after scaling) and sign patterns included
            let v: [f32; BLOCK] = std::array::from_fn(|i| {
                let h = (i * 7919 + seed * 104729) % 1009;
                (h as f32 - 504.0) * if seed % 3 == 0 { 0.5 } else { 0.0137 }
            });
            let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
            // SAFETY: AVX2 is present
            let fast = unsafe { x86::quantize_block(&v, &mut a) };
            let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let inv = 127.0 / amax;
            let mut sum = 0;
            for (d, x) in b.iter_mut().zip(&v) {
                *d = (x * inv).round_ties_even() as i8;
                sum += *d as i32;
            }
            assert_eq!((fast, a), ((amax / 127.0, sum), b), "seed {seed}");
        }
    }

    #[test]
    fn misshapen_operands_are_errors() {
        let b = pack(&[9u8; 64], 2, 32);
        let s = pack_scales(&[1.0; 2], 2, 32, 32);
        let mut y = vec![0f32; 2];
        assert!(Product::new(&[0.0; 31], 32, &b, (&s, 32), 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 32], 32, &b[1..], (&s, 32), 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 32], 32, &b, (&s[1..], 32), 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 32], 32, &b, (&s, 32), 2, &mut y[..1]).is_err());
        assert!(Product::new(&[0.0; 32], 32, &b, (&s, 48), 2, &mut y).is_err());
        assert!(Product::new(&[0.0; 32], 32, &b, (&s, 0), 2, &mut y).is_err());
        let mut p = vec![0f32; 2];
        Product::new(&[1.0; 32], 32, &b, (&s, 32), 2, &mut p)
            .unwrap()
            .run_all();
        // code 9 is +1: Σ 1 · 127 codes · (1 / 127)
        assert_eq!(p, vec![32.0, 32.0]);
    }
}
