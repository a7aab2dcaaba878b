//! `int8-dynamic`: int8 compute. Per-output-channel symmetric int8 weights
//! (a clipping search per channel, or GPTQ) in ONNX Runtime's
//! `com.microsoft.DynamicQuantizeMatMul`: each product quantises its
//! activations to uint8 per tensor when it runs and multiplies in
//! integers (MLAS picks AVX2 `vpmaddubsw`, AVX-512 VNNI or AMX at run
//! time), the int32 sums scaled back to float32 per channel. For the
//! compute-bound stages (vision encoder, resampler, prefill); ONNX Runtime
//! only.

use flamingo_graphs::{Node, Tensor};

use super::{int8_weight, Format, Rewrite, Target};

/// `[n, k]` codes as `DynamicQuantizeMatMul`'s `B`: `[k, n]`, as bytes.
fn transposed(codes: &[i8], n: usize, k: usize) -> Vec<u8> {
    let mut b = vec![0u8; n * k];
    for r in 0..n {
        for c in 0..k {
            b[c * n + r] = codes[r * k + c] as u8;
        }
    }
    b
}

pub struct Int8Dynamic;

/// ONNX Runtime's operator.
pub const OP: &str = "DynamicQuantizeMatMul";

impl Format for Int8Dynamic {
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String> {
        let (n_out, k_in) = (t.n_out, t.k_in);
        let (q, scales) = int8_weight(t, vec![k_in, n_out], transposed);
        let tag = if t.head { ".head" } else { "" };
        let qn = format!("{}{tag}.qweight", t.name);
        let sn = format!("{}{tag}.scales", t.name);
        out.initializers.push((qn.clone(), q));
        out.initializers
            .push((sn.clone(), Tensor::from_f32(vec![n_out], &scales)));
        let mut inputs = vec![t.node.inputs[0].clone(), qn, sn];
        // a Gemm's bias is the operator's fifth input (no zero point: symmetric)
        if t.node.op_type == "Gemm" {
            if let Some(c) = t.node.inputs.get(2).filter(|c| !c.is_empty()) {
                inputs.extend([String::new(), c.clone()]);
            }
        }
        out.replaced.insert(
            t.ni,
            Node {
                name: t.node.name.clone(),
                op_type: OP.into(),
                domain: "com.microsoft".into(),
                inputs,
                outputs: t.node.outputs.clone(),
                attrs: vec![],
                keep_fp32: false,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_codes_are_transposed_to_k_by_n() {
        let codes: Vec<i8> = vec![1, 2, 3, -4, -5, -6];
        assert_eq!(
            super::transposed(&codes, 2, 3),
            vec![1, (-4i8) as u8, 2, (-5i8) as u8, 3, (-6i8) as u8]
        );
    }
}
