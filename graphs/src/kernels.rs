//! The layouts of this runtime's own kernels, the custom operators
//! `ai.flamingo.MatMulInt8` and `ai.flamingo.MatMulInt4`: operator names,
//! domain, how weights are packed and what shapes they take. The precision
//! rewrites write weights in these layouts; the runtime's kernels
//! (`flamingo_runtime::int8_matmul`, `int4_matmul`) read them.

/// `ai.flamingo.MatMulInt8`: `Y[m, n] = scale[n] · Σₖ A[m, k] · Q[n, k]`
/// with per-output-channel int8 weights `Q`, float32 activations.
///
/// Inputs: `A` float32 `[..., K]`; `B` int8 `[⌈N/8⌉, ⌈K/8⌉, 8, 8]`
/// ([`pack`](int8::pack)); `scales` float32 `[N]`. Attributes `K`, `N`.
/// Output float32 `[..., N]`.
pub mod int8 {
    /// The operator's domain.
    pub const DOMAIN: &str = "ai.flamingo";
    /// The operator's name.
    pub const OP: &str = "MatMulInt8";
    /// Output channels per tile.
    pub const TILE: usize = 8;
    /// `k` per interleaved step.
    pub const KSTEP: usize = 8;
    /// The packed weight's shape for `n` output channels of `k` inputs.
    pub fn packed_shape(n: usize, k: usize) -> [usize; 4] {
        [n.div_ceil(TILE), k.div_ceil(KSTEP), TILE, KSTEP]
    }

    /// `[n, k]` row-major int8 codes → the operator's layout: tile `t`, step
    /// `s`, channel `c`, offset `j` holds `Q[t·8 + c, s·8 + j]`, zeros past `n`
    /// and `k`.
    pub fn pack(codes: &[i8], n: usize, k: usize) -> Vec<i8> {
        let [tiles, steps, _, _] = packed_shape(n, k);
        let mut out = vec![0i8; tiles * steps * TILE * KSTEP];
        for (r, row) in codes.chunks_exact(k.max(1)).take(n).enumerate() {
            let (t, c) = (r / TILE, r % TILE);
            for (i, &q) in row.iter().enumerate() {
                let (s, j) = (i / KSTEP, i % KSTEP);
                out[((t * steps + s) * TILE + c) * KSTEP + j] = q;
            }
        }
        out
    }

    /// Why a product's operands cannot be multiplied.
    pub fn check(
        a_len: usize,
        k: usize,
        b_len: usize,
        scales: usize,
        n: usize,
    ) -> Result<usize, String> {
        if k == 0 || n == 0 {
            return Err(format!("{OP}: K = {k} and N = {n} must be positive"));
        }
        if !a_len.is_multiple_of(k) {
            return Err(format!(
                "{OP}: input of {a_len} values is not rows of K = {k}"
            ));
        }
        let want: usize = packed_shape(n, k).iter().product();
        if b_len != want {
            return Err(format!(
                "{OP}: packed weight has {b_len} values, expected {want} for N = {n}, K = {k}"
            ));
        }
        if scales != n {
            return Err(format!("{OP}: {scales} scales for N = {n} channels"));
        }
        Ok(a_len / k)
    }
}

/// `ai.flamingo.MatMulInt4`: symmetric 4-bit weight codes (0..15, zero
/// point 8) with a float32 scale per block of `block_size` `k`; activations
/// quantised to int8 per row and block of 32.
///
/// Inputs: `A` float32 `[..., K]`; `B` uint8 `[⌈N/8⌉, ⌈K/32⌉, 128]`
/// ([`pack`](int4::pack)); `scales` float32 `[⌈N/8⌉, ⌈K/bs⌉, 8]`
/// ([`pack_scales`](int4::pack_scales)). Attributes `K`, `N`,
/// `block_size` (a multiple of 32; default 32). Output float32 `[..., N]`.
pub mod int4 {
    pub use super::int8::DOMAIN;

    /// The operator's name.
    pub const OP: &str = "MatMulInt4";
    /// Output channels per tile.
    pub const TILE: usize = 8;
    /// `k` per activation block (and per packed block of weights); weight
    /// scale blocks are a multiple of it.
    pub const BLOCK: usize = 32;
    /// Packed bytes of one tile's block.
    pub const TILE_BLOCK_BYTES: usize = TILE * BLOCK / 2;

    /// The packed weight's shape for `n` output channels of `k` inputs.
    pub fn packed_shape(n: usize, k: usize) -> [usize; 3] {
        [n.div_ceil(TILE), k.div_ceil(BLOCK), TILE_BLOCK_BYTES]
    }

    /// The packed scales' shape, for scale blocks of `bs`.
    pub fn scales_shape(n: usize, k: usize, bs: usize) -> [usize; 3] {
        [n.div_ceil(TILE), k.div_ceil(bs.max(1)), TILE]
    }

    /// `[n, k]` row-major codes (0..15; only the low 4 bits are read) → the
    /// operator's layout. In tile `t`, block `b`, step `s` (8 `k`), byte
    /// `c·4 + j` holds `Q[t·8 + c, b·32 + s·8 + j]` in its low nibble and
    /// `Q[…, b·32 + s·8 + 4 + j]` in its high one. Past `n` and `k`: code 8
    /// (zero).
    pub fn pack(codes: &[u8], n: usize, k: usize) -> Vec<u8> {
        let [tiles, blocks, _] = packed_shape(n, k);
        let mut out = vec![0x88u8; tiles * blocks * TILE_BLOCK_BYTES];
        for (r, row) in codes.chunks_exact(k.max(1)).take(n).enumerate() {
            let (t, c) = (r / TILE, r % TILE);
            for (i, &q) in row.iter().enumerate() {
                let (b, o) = (i / BLOCK, i % BLOCK);
                let (s, j) = (o / 8, o % 8);
                let at = (t * blocks + b) * TILE_BLOCK_BYTES + s * 32 + c * 4 + j % 4;
                out[at] = if j < 4 {
                    (out[at] & 0xF0) | (q & 15)
                } else {
                    (out[at] & 0x0F) | ((q & 15) << 4)
                };
            }
        }
        out
    }

    /// `[n, ⌈k/bs⌉]` row-major block scales → the operator's `[tile, block,
    /// channel]` layout, zeros past `n`.
    pub fn pack_scales(scales: &[f32], n: usize, k: usize, bs: usize) -> Vec<f32> {
        let [tiles, blocks, _] = scales_shape(n, k, bs);
        let mut out = vec![0f32; tiles * blocks * TILE];
        for (r, row) in scales.chunks_exact(blocks.max(1)).take(n).enumerate() {
            for (b, &s) in row.iter().enumerate() {
                out[((r / TILE) * blocks + b) * TILE + r % TILE] = s;
            }
        }
        out
    }

    /// Why a product's operands cannot be multiplied; else the rows of `A`.
    pub fn check(
        a_len: usize,
        k: usize,
        b_len: usize,
        (scales, bs): (usize, usize),
        n: usize,
    ) -> Result<usize, String> {
        if k == 0 || n == 0 {
            return Err(format!("{OP}: K = {k} and N = {n} must be positive"));
        }
        if bs == 0 || !bs.is_multiple_of(BLOCK) {
            return Err(format!(
                "{OP}: block_size {bs} must be a positive multiple of {BLOCK}"
            ));
        }
        if !a_len.is_multiple_of(k) {
            return Err(format!(
                "{OP}: input of {a_len} values is not rows of K = {k}"
            ));
        }
        let want: usize = packed_shape(n, k).iter().product();
        if b_len != want {
            return Err(format!(
                "{OP}: packed weight has {b_len} bytes, expected {want} for N = {n}, K = {k}"
            ));
        }
        let want: usize = scales_shape(n, k, bs).iter().product();
        if scales != want {
            return Err(format!(
                "{OP}: {scales} scales, expected {want} for N = {n}, K = {k}, block_size {bs}"
            ));
        }
        Ok(a_len / k)
    }
}
