//! `int8`: per-output-channel symmetric int8 weights behind a standard
//! `DequantizeLinear` in front of the unchanged MatMul/Gemm (portable: tract
//! and ONNX Runtime run it). The dequantized value keeps the weight's name.

use std::sync::Arc;

use flamingo_graphs::{Attr, DType, Node, Tensor, TensorData};

use super::{lazy, Format, Rewrite, Target};

/// `[rows, cols]` f32 -> per-row symmetric int8 and scales.
fn int8_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales[r] = s;
        for (c, v) in row.iter().enumerate() {
            q[r * cols + c] = ((v / s).round().clamp(-127.0, 127.0) as i8) as u8;
        }
    }
    (q, scales)
}

/// The portable per-channel format.
pub struct Int8;

impl Format for Int8 {
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String> {
        let (name, n_out, k_in) = (t.name, t.n_out, t.k_in);
        let qn = format!("{name}.qweight");
        let sn = format!("{name}.scale");
        let zn = format!("{name}.zero_point");
        let q = lazy(DType::I8, vec![n_out, k_in], t.src.clone(), move |w| {
            int8_rows(w, n_out, k_in).0
        });
        // scales computed eagerly (small), from the same values
        let (_, scales) = int8_rows(t.w, n_out, k_in);
        // dequantize to [N, K] then, for MatMul, transpose back to [K, N]
        out.initializers.push((qn.clone(), q));
        out.initializers
            .push((sn.clone(), Tensor::from_f32(vec![n_out], &scales)));
        out.initializers.push((
            zn.clone(),
            Tensor {
                dtype: DType::I8,
                shape: vec![n_out],
                data: TensorData::Bytes(Arc::new(vec![0u8; n_out])),
            },
        ));
        let deq_out = if t.head {
            name.to_string()
        } else {
            format!("{name}/dequantized")
        };
        out.extra_nodes.push((
            t.ni,
            Node {
                name: format!("{name}/DequantizeLinear"),
                op_type: "DequantizeLinear".into(),
                domain: String::new(),
                inputs: vec![qn, sn, zn],
                outputs: vec![deq_out.clone()],
                attrs: vec![("axis".into(), Attr::Int(0))],
                keep_fp32: false,
            },
        ));
        if !t.head {
            out.extra_nodes.push((
                t.ni,
                Node {
                    name: format!("{name}/Transpose"),
                    op_type: "Transpose".into(),
                    domain: String::new(),
                    inputs: vec![deq_out],
                    outputs: vec![name.to_string()],
                    attrs: vec![("perm".into(), Attr::Ints(vec![1, 0]))],
                    keep_fp32: false,
                },
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_are_symmetric_per_channel() {
        let w = [1.0f32, -2.0, 0.5, 4.0, 0.0, -4.0];
        let (q, s) = int8_rows(&w, 2, 3);
        assert_eq!(s, vec![2.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q[1] as i8, -127);
        assert_eq!(q[3] as i8, 127);
    }
}
