//! ONNX Runtime's `com.microsoft.MatMulNBits`, which the `int8-ort` and
//! `int4` formats write: blocks of `block_size` along K, asymmetric with
//! packed zero points (or symmetric: none, ONNX Runtime's mid-code),
//! `accuracy_level` 4 (int8 compute). The LM head is quantised at
//! `head_bits`.

use std::sync::Arc;

use flamingo_graphs::{Attr, DType, Node, Tensor, TensorData};

use super::grid::nbits_rows;
use super::{lazy, Rewrite, Target};

/// Replaces `t`'s product with a `MatMulNBits` of `bits` (the body's; the
/// head takes `t.opts.head_bits`) over blocks of `block_size`.
pub(super) fn quantize(
    t: &Target,
    out: &mut Rewrite,
    bits: u32,
    block_size: usize,
) -> Result<(), String> {
    let (name, n_out, k_in) = (t.name, t.n_out, t.k_in);
    let symmetric = t.opts.symmetric;
    let nbits = if t.head { t.opts.head_bits } else { bits };
    let blocks = k_in.div_ceil(block_size);
    let qshape = vec![n_out, blocks, block_size * nbits as usize / 8];
    let (q, scales, zps) = match t.comp {
        Some(c) => {
            let (packed, scales, zps) =
                nbits_rows(t.w, n_out, k_in, block_size, nbits, symmetric, Some(c));
            let q = Tensor {
                dtype: DType::U8,
                shape: qshape,
                data: TensorData::Bytes(Arc::new(packed)),
            };
            (q, scales, zps)
        }
        None => {
            // packed lazily, when written: no second copy in memory
            let (_, scales, zps) = nbits_rows(t.w, n_out, k_in, block_size, nbits, symmetric, None);
            let q = lazy(DType::U8, qshape, t.src.clone(), move |w| {
                nbits_rows(w, n_out, k_in, block_size, nbits, symmetric, None).0
            });
            (q, scales, zps)
        }
    };
    let tag = if t.head { ".head" } else { "" };
    let qn = format!("{name}{tag}.qweight");
    let sn = format!("{name}{tag}.scales");
    let zn = format!("{name}{tag}.zero_points");
    out.initializers.push((qn.clone(), q));
    out.initializers
        .push((sn.clone(), Tensor::from_f32(vec![n_out * blocks], &scales)));
    let mut inputs = vec![t.node.inputs[0].clone(), qn, sn];
    // symmetric: no zero points, ONNX Runtime's default is the mid-code
    if !symmetric {
        let zlen = zps.len();
        out.initializers.push((
            zn.clone(),
            Tensor {
                dtype: DType::U8,
                shape: vec![zlen],
                data: TensorData::Bytes(Arc::new(zps)),
            },
        ));
        inputs.push(zn);
    }
    out.replaced.insert(
        t.ni,
        Node {
            name: t.node.name.clone(),
            op_type: "MatMulNBits".into(),
            domain: "com.microsoft".into(),
            inputs,
            outputs: t.node.outputs.clone(),
            attrs: vec![
                ("K".into(), Attr::Int(k_in as i64)),
                ("N".into(), Attr::Int(n_out as i64)),
                ("bits".into(), Attr::Int(nbits as i64)),
                ("block_size".into(), Attr::Int(block_size as i64)),
                // int8 activations per block: ONNX Runtime's fast kernels
                ("accuracy_level".into(), Attr::Int(4)),
            ],
            keep_fp32: false,
        },
    );
    Ok(())
}
