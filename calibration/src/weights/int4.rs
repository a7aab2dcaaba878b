//! `int4`: 4-bit blocks in ONNX Runtime's `MatMulNBits` (ONNX Runtime
//! only), see [`super::matmul_nbits`].

use super::{matmul_nbits, Format, Rewrite, Target};

pub struct Int4 {
    pub block_size: usize,
}

impl Format for Int4 {
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String> {
        matmul_nbits::quantize(t, out, 4, self.block_size)
    }
}
