//! The quantisation grids every weight format shares: a per-block (or
//! per-channel) scale and zero point chosen by a clipping search, or by
//! GPTQ's error compensation ([`crate::gptq`]), and the codes on that grid.

use crate::gptq::{quantize_row, refit_scales, Compensation};

/// Asymmetric 4-bit (scale, zero point) of a block: the min/max range shrunk
/// by the ratio (1.0 down to 0.7) that gives the least squared error.
pub(crate) fn best_range(vals: &[f32], levels: f32) -> (f32, u8) {
    let mn0 = vals.iter().fold(0f32, |m, v| m.min(*v));
    let mx0 = vals.iter().fold(0f32, |m, v| m.max(*v));
    let mut best = (f32::INFINITY, 1.0f32, 0u8);
    for step in 0..=6 {
        let ratio = 1.0 - 0.05 * step as f32;
        let (mn, mx) = (mn0 * ratio, mx0 * ratio);
        let scale = if mx > mn { (mx - mn) / levels } else { 1.0 };
        let zp = (-mn / scale).round().clamp(0.0, levels) as u8;
        let err: f32 = vals
            .iter()
            .map(|v| {
                let q = ((v / scale).round() + zp as f32).clamp(0.0, levels);
                let d = (q - zp as f32) * scale - v;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, scale, zp);
        }
    }
    (best.1, best.2)
}

/// Symmetric (scale, mid-code zero point) of a block: `max |v|` over the
/// half range, shrunk by the ratio (1.0 down to 0.7) with the least squared
/// error.
pub(crate) fn best_symmetric(vals: &[f32], levels: f32) -> (f32, u8) {
    let zp = (levels + 1.0) / 2.0;
    let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut best = (f32::INFINITY, 1.0f32);
    for step in 0..=6 {
        let scale = if amax > 0.0 {
            amax * (1.0 - 0.05 * step as f32) / (zp - 1.0)
        } else {
            1.0
        };
        let err: f32 = vals
            .iter()
            .map(|v| {
                let d = grid_point(*v, (scale, zp as u8), levels) - v;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, scale);
        }
    }
    (best.1, zp as u8)
}

/// The grid point (`levels` + 1 codes) of `v` under `(scale, zero point)`, dequantized.
pub(crate) fn grid_point(v: f32, (scale, zp): (f32, u8), levels: f32) -> f32 {
    (grid_code(v, scale, zp, levels) as f32 - zp as f32) * scale
}

pub(crate) fn grid_code(v: f32, scale: f32, zp: u8, levels: f32) -> u8 {
    ((v / scale).round() + zp as f32).clamp(0.0, levels) as u8
}

/// `[N, K]` f32 rows -> MatMulNBits (`bits` 4 or 8) blobs `[N, blocks,
/// bs·bits/8]`, scales `[N*blocks]`, zero points (4 bits: two per byte,
/// `[N * ceil(blocks/2)]`; 8 bits: `[N * blocks]`). Round-to-nearest, or
/// GPTQ with `comp`.
pub(crate) fn nbits_rows(
    w: &[f32],
    n: usize,
    k: usize,
    bs: usize,
    bits: u32,
    symmetric: bool,
    comp: Option<&Compensation>,
) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let levels = ((1u32 << bits) - 1) as f32;
    let per_byte = (8 / bits) as usize;
    let blocks = k.div_ceil(bs);
    let zp_row = blocks.div_ceil(per_byte);
    let row_bytes = blocks * bs / per_byte;
    let mut packed = vec![0u8; n * row_bytes];
    let mut scales = vec![0f32; n * blocks];
    let mut zps = vec![0u8; n * zp_row];
    // one output row at a time, rows split over the cores
    let row = |r: usize, packed: &mut [u8], scales: &mut [f32], zps: &mut [u8]| {
        let mut row: Vec<f64> = (0..blocks * bs)
            .map(|i| if i < k { w[r * k + i] as f64 } else { 0.0 })
            .collect();
        let orig = row.clone();
        let mut params = quantize_row(
            &mut row,
            k,
            bs,
            comp,
            |b| {
                if symmetric {
                    best_symmetric(b, levels)
                } else {
                    best_range(b, levels)
                }
            },
            |v, p| grid_point(v, p, levels),
        );
        let codes: Vec<u8> = row
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (scale, zp) = params[i / bs];
                grid_code(*v as f32, scale, zp, levels)
            })
            .collect();
        if let Some(c) = comp {
            let centred: Vec<f64> = codes
                .iter()
                .enumerate()
                .map(|(i, q)| *q as f64 - params[i / bs].1 as f64)
                .collect();
            if let Some(sc) = refit_scales(&orig, &centred, &c.h, k, bs) {
                for (p, s) in params.iter_mut().zip(sc) {
                    p.0 = s as f32;
                }
            }
        }
        let shift = |i: usize| (i % per_byte) as u32 * bits;
        for (b, &(scale, zp)) in params.iter().enumerate() {
            scales[b] = scale;
            zps[b / per_byte] |= zp << shift(b);
        }
        for (i, q) in codes.iter().enumerate() {
            packed[i / per_byte] |= *q << shift(i);
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        let chunks = packed
            .chunks_mut(per * row_bytes)
            .zip(scales.chunks_mut(per * blocks))
            .zip(zps.chunks_mut(per * zp_row));
        for (t, ((p, s), z)) in chunks.enumerate() {
            let row = &row;
            sc.spawn(move || {
                for (j, ((p, s), z)) in p
                    .chunks_mut(row_bytes)
                    .zip(s.chunks_mut(blocks))
                    .zip(z.chunks_mut(zp_row))
                    .enumerate()
                {
                    row(t * per + j, p, s, z);
                }
            });
        }
    });
    (packed, scales, zps)
}

/// `[n, k]` f32 rows → per-row symmetric int8 codes (`[n, k]`) and scales:
/// `max |w|` over 127 shrunk by the ratio with the least squared error, or
/// GPTQ with `comp`. The `int8-flamingo` weights: `w ≈ code · scale`.
pub fn int8_channels(
    w: &[f32],
    n: usize,
    k: usize,
    comp: Option<&Compensation>,
) -> (Vec<i8>, Vec<f32>) {
    // one block per row; codes are offset by the mid-code 128
    let (codes, scales, _) = nbits_rows(w, n, k, k, 8, true, comp);
    (
        codes.iter().map(|c| (*c as i16 - 128) as i8).collect(),
        scales,
    )
}

/// `[n, k]` f32 rows → symmetric int4 codes (`[n, k]`, 0..15, zero point
/// 8) and scales (`[n, ⌈k/bs⌉]`) in blocks of `bs`: the `int4-flamingo`
/// weights, `w ≈ (code − 8) · scale`. As [`int8_channels`].
pub fn int4_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    bs: usize,
    comp: Option<&Compensation>,
) -> (Vec<u8>, Vec<f32>) {
    let (packed, scales, _) = nbits_rows(w, n, k, bs, 4, true, comp);
    let row_bytes = k.div_ceil(bs) * bs / 2;
    let codes = (0..n * k)
        .map(|i| {
            let (r, c) = (i / k, i % k);
            (packed[r * row_bytes + c / 2] >> (4 * (c % 2))) & 15
        })
        .collect();
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_packing_dequantizes_within_half_a_step() {
        let (n, k, bs) = (3, 40, 16);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let (packed, scales, zps) = nbits_rows(&w, n, k, bs, 4, false, None);
        let blocks = k.div_ceil(bs);
        for r in 0..n {
            for kk in 0..k {
                let b = kk / bs;
                let i = kk % bs;
                let byte = packed[(r * blocks + b) * bs / 2 + i / 2];
                let q = if i % 2 == 0 { byte & 15 } else { byte >> 4 };
                let zb = zps[r * blocks.div_ceil(2) + b / 2];
                let zp = if b % 2 == 0 { zb & 15 } else { zb >> 4 };
                let s = scales[r * blocks + b];
                let deq = (q as f32 - zp as f32) * s;
                // within half a step, or clipped to the range edge
                let v = w[r * k + kk];
                assert!(
                    (deq - v).abs() <= s * 0.5 + 1e-6 || q == 0 || q == 15,
                    "{deq} vs {v}"
                );
            }
        }
    }
}
