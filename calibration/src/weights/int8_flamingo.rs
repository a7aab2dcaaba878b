//! `int8-flamingo`: per-output-channel symmetric int8 weights (a clipping
//! search per channel, or GPTQ) in this runtime's own kernel,
//! `ai.flamingo.MatMulInt8` (layout: `flamingo_graphs::kernels::int8`):
//! float32 activations and accumulation, the weights streamed at close to
//! the memory bandwidth. ONNX Runtime through this runtime only (which
//! registers the operator); the LM head included.

use flamingo_graphs::kernels::int8 as mi;
use flamingo_graphs::Tensor;

use super::{int8_weight, own_kernel, Format, Rewrite, Target};

/// `[n, k]` int8 codes in `MatMulInt8`'s layout, as the tensor's bytes.
fn packed_bytes(codes: &[i8], n: usize, k: usize) -> Vec<u8> {
    mi::pack(codes, n, k).iter().map(|q| *q as u8).collect()
}

pub struct Int8Flamingo;

impl Format for Int8Flamingo {
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String> {
        let (n_out, k_in) = (t.n_out, t.k_in);
        let shape = mi::packed_shape(n_out, k_in).to_vec();
        let (q, scales) = int8_weight(t, shape, packed_bytes);
        own_kernel(
            out,
            t,
            (q, Tensor::from_f32(vec![n_out], &scales)),
            (mi::OP, None),
        );
        Ok(())
    }
}
