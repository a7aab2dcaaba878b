//! `int8-ort`: 8-bit blocks in ONNX Runtime's `MatMulNBits` (its int8
//! kernels; ONNX Runtime only), see [`super::matmul_nbits`].

use super::{matmul_nbits, Format, Rewrite, Target};

pub struct Int8Ort {
    pub block_size: usize,
}

impl Format for Int8Ort {
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String> {
        matmul_nbits::quantize(t, out, 8, self.block_size)
    }
}
