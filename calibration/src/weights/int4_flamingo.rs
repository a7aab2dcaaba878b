//! `int4-flamingo`: symmetric int4 weights in blocks of `block_size` (32,
//! 64, 128, ...) along K in this runtime's own kernel,
//! `ai.flamingo.MatMulInt4` (layout: `flamingo_graphs::kernels::int4`):
//! int8 activations per block of 32, as `MatMulNBits` at `accuracy_level`
//! 4, but one `vpmaddubsw` per 32 weights with the output channels in
//! separate lanes. ONNX Runtime through this runtime only; the LM head at 8
//! bits in [`super::int8_flamingo`] or at 4 in this kernel.

use std::sync::Arc;

use flamingo_graphs::kernels::int4 as m4;
use flamingo_graphs::{DType, Tensor, TensorData};

use super::grid::int4_blocks;
use super::{lazy, own_kernel, Format, Rewrite, Target};

pub struct Int4Flamingo {
    pub block_size: usize,
}

impl Format for Int4Flamingo {
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String> {
        let (n_out, k_in, bs) = (t.n_out, t.k_in, self.block_size);
        let shape = m4::packed_shape(n_out, k_in).to_vec();
        let (q, scales) = match t.comp {
            Some(c) => {
                let (codes, scales) = int4_blocks(t.w, n_out, k_in, bs, Some(c));
                let q = Tensor {
                    dtype: DType::U8,
                    shape,
                    data: TensorData::Bytes(Arc::new(m4::pack(&codes, n_out, k_in))),
                };
                (q, scales)
            }
            None => {
                // packed lazily, when written: no second copy in memory
                let (_, scales) = int4_blocks(t.w, n_out, k_in, bs, None);
                let q = lazy(DType::U8, shape, t.src.clone(), move |w| {
                    m4::pack(&int4_blocks(w, n_out, k_in, bs, None).0, n_out, k_in)
                });
                (q, scales)
            }
        };
        let scales = Tensor::from_f32(
            m4::scales_shape(n_out, k_in, bs).to_vec(),
            &m4::pack_scales(&scales, n_out, k_in, bs),
        );
        own_kernel(out, t, (q, scales), (m4::OP, Some(bs)));
        Ok(())
    }
}
