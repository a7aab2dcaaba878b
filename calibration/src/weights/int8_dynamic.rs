//! `int8-dynamic`: int8 compute. Per-output-channel symmetric int8 weights
//! (a clipping search per channel, or GPTQ) in ONNX Runtime's
//! `com.microsoft.DynamicQuantizeMatMul`: each product quantises its
//! activations to uint8 per tensor when it runs and multiplies in
//! integers, the int32 sums scaled back to float32 per channel. For the
//! compute-bound stages (vision encoder, resampler, prefill); ONNX Runtime
//! only.
//!
//! The weights are stored as uint8 with zero point 128 (the same values):
//! with int8 weights MLAS multiplies uint8 by int8 with AVX2's
//! `vpmaddubsw`, whose pairwise int16 sums saturate (255·127·2 > 32767) on
//! CPUs without VNNI, which wrecks the products (logits cosine 0.98 on the
//! fixtures on an AVX2 machine); uint8 × uint8 widens to int16 first and is
//! exact on every CPU.

use flamingo_graphs::{DType, Graph, Node, Tensor};

use super::{int8_weight, Format, Rewrite, Target};

/// The zero point of the uint8 weights.
const ZERO_POINT: u8 = 128;

/// `[n, k]` codes as `DynamicQuantizeMatMul`'s uint8 `B`: `[k, n]`, each
/// code plus [`ZERO_POINT`].
fn transposed(codes: &[i8], n: usize, k: usize) -> Vec<u8> {
    let mut b = vec![0u8; n * k];
    for r in 0..n {
        for c in 0..k {
            b[c * n + r] = (codes[r * k + c] as i16 + ZERO_POINT as i16) as u8;
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
        let (mut q, scales) = int8_weight(t, vec![k_in, n_out], transposed);
        q.dtype = DType::U8;
        let tag = if t.head { ".head" } else { "" };
        let qn = format!("{}{tag}.qweight", t.name);
        let sn = format!("{}{tag}.scales", t.name);
        let zn = format!("{}{tag}.zero_point", t.name);
        out.initializers.push((qn.clone(), q));
        out.initializers
            .push((sn.clone(), Tensor::from_f32(vec![n_out], &scales)));
        out.initializers.push((
            zn.clone(),
            Tensor {
                dtype: DType::U8,
                shape: vec![n_out],
                data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(vec![
                    ZERO_POINT;
                    n_out
                ])),
            },
        ));
        let mut inputs = vec![t.node.inputs[0].clone(), qn, sn, zn];
        // a Gemm's bias is the operator's fifth input
        if t.node.op_type == "Gemm" {
            if let Some(c) = t.node.inputs.get(2).filter(|c| !c.is_empty()) {
                inputs.push(c.clone());
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

/// Folds each constant bias `Add` that alone reads a
/// `DynamicQuantizeMatMul`'s output into the operator's bias input (one
/// pass over the output fewer).
pub fn fold_bias(g: &Graph) -> Graph {
    use std::collections::HashMap;
    let vectors: HashMap<&str, usize> = g
        .initializers
        .iter()
        .filter(|(_, t)| t.dtype == flamingo_graphs::DType::F32 && t.shape.len() == 1)
        .map(|(n, t)| (n.as_str(), t.shape[0]))
        .collect();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (ni, n) in g.nodes.iter().enumerate() {
        for i in &n.inputs {
            readers.entry(i.as_str()).or_default().push(ni);
        }
    }
    let outputs: std::collections::HashSet<&str> =
        g.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut nodes = g.nodes.clone();
    let mut dropped = vec![false; nodes.len()];
    for (ni, n) in g.nodes.iter().enumerate() {
        if n.op_type != OP || n.inputs.len() > 4 || outputs.contains(n.outputs[0].as_str()) {
            continue;
        }
        let Some(&[ai]) = readers.get(n.outputs[0].as_str()).map(Vec::as_slice) else {
            continue;
        };
        let add = &g.nodes[ai];
        if add.op_type != "Add" || add.inputs.len() != 2 {
            continue;
        }
        let bias = if add.inputs[0] == n.outputs[0] {
            &add.inputs[1]
        } else {
            &add.inputs[0]
        };
        // the bias must be a [N] vector over the product's N columns
        let n_cols = g
            .initializers
            .iter()
            .find(|(name, _)| *name == n.inputs[2])
            .map(|(_, t)| t.shape.iter().product::<usize>());
        if vectors.get(bias.as_str()).copied() != n_cols || n_cols.is_none() {
            continue;
        }
        // the bias is the fifth input, after the (optional) zero point
        nodes[ni].inputs.resize(4, String::new());
        nodes[ni].inputs.push(bias.clone());
        nodes[ni].outputs = add.outputs.clone();
        dropped[ai] = true;
    }
    let nodes = nodes
        .into_iter()
        .zip(dropped)
        .filter_map(|(n, d)| (!d).then_some(n))
        .collect();
    Graph { nodes, ..g.clone() }
}

#[cfg(test)]
mod tests {
    use flamingo_graphs::{DType, Dim, Graph, IoSpec, Node, Tensor};

    fn node(op: &str, inputs: &[&str], output: &str) -> Node {
        Node {
            name: output.into(),
            op_type: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.into()],
            attrs: vec![],
            keep_fp32: false,
        }
    }

    /// A bias Add alone reading the product folds into it; one whose
    /// product is read twice, or whose other input is no [N] constant,
    /// stays.
    #[test]
    fn a_lone_bias_add_folds_into_the_product() {
        let io = |name: &str| IoSpec {
            name: name.into(),
            dtype: DType::F32,
            dims: vec![Dim::Fixed(2), Dim::Fixed(3)],
        };
        let g = Graph {
            name: "g".into(),
            doc: String::new(),
            inputs: vec![io("x")],
            outputs: vec![io("y"), io("z")],
            nodes: vec![
                node(super::OP, &["x", "q", "s", "zp"], "p"),
                node("Add", &["b", "p"], "y"),
                node(super::OP, &["x", "q", "s"], "p2"),
                node("Add", &["p2", "b"], "y2"),
                node("Add", &["p2", "y"], "z"),
            ],
            initializers: vec![
                ("q".into(), Tensor::from_f32(vec![3, 3], &[0.0; 9])),
                ("s".into(), Tensor::from_f32(vec![3], &[1.0; 3])),
                ("b".into(), Tensor::from_f32(vec![3], &[1.0, 2.0, 3.0])),
            ],
        };
        let f = super::fold_bias(&g);
        assert_eq!(f.nodes.len(), 4);
        assert_eq!(f.nodes[0].inputs, ["x", "q", "s", "zp", "b"]);
        assert_eq!(f.nodes[0].outputs, ["y"]);
        assert_eq!(f.nodes[1].inputs.len(), 3, "p2 has two readers");
    }

    #[test]
    fn the_codes_are_transposed_to_k_by_n() {
        let codes: Vec<i8> = vec![1, 2, 3, -4, -5, -6];
        assert_eq!(
            super::transposed(&codes, 2, 3),
            vec![129, 124, 130, 123, 131, 122]
        );
    }
}
