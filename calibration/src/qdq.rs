//! Static int8 QDQ graphs: per-tensor activation scales from calibration and
//! per-channel symmetric int8 weights, as QuantizeLinear/DequantizeLinear
//! pairs in front of every MatMul / Gemm / Conv. Norms, softmax and gates
//! stay float. ONNX Runtime CPU runs them (and fuses what it can); TensorRT
//! reads the same graphs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flamingo_graphs::{Attr, DType, Graph, Node, Tensor, TensorData};

use crate::observe::Range;

fn node(
    name: String,
    op: &str,
    inputs: Vec<String>,
    out: String,
    attrs: Vec<(String, Attr)>,
) -> Node {
    Node {
        name,
        op_type: op.into(),
        domain: String::new(),
        inputs,
        outputs: vec![out],
        attrs,
        keep_fp32: false,
    }
}

fn int8_tensor(shape: Vec<usize>, bytes: Vec<u8>) -> Tensor {
    Tensor {
        dtype: DType::I8,
        shape,
        data: TensorData::Bytes(Arc::new(bytes)),
    }
}

/// Per-channel symmetric int8 along `axis` (0 or 1) of a 2-D or 4-D weight.
fn quantize_channels(w: &[f32], shape: &[usize], axis: usize) -> (Vec<u8>, Vec<f32>) {
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product::<usize>().max(1);
    let channel = |k: usize| (k / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (k, v) in w.iter().enumerate() {
        let c = channel(k);
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|a| if *a > 0.0 { a / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(k, v)| ((v / scales[channel(k)]).round().clamp(-127.0, 127.0) as i8) as u8)
        .collect();
    (q, scales)
}

/// Inserts Q/DQ for the activations in `ranges` and their weights.
pub fn to_qdq(g: &Graph, ranges: &BTreeMap<String, Range>) -> Result<Graph, String> {
    let inits: HashMap<&str, &Tensor> = g
        .initializers
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    let mut weight_axis: HashMap<String, usize> = HashMap::new();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.nodes {
        for i in &n.inputs {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for n in &g.nodes {
        if !matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv") || n.inputs.len() < 2 {
            continue;
        }
        let (a, w) = (&n.inputs[0], &n.inputs[1]);
        let Some(t) = inits.get(w.as_str()) else {
            continue;
        };
        if !ranges.contains_key(a) || t.dtype != DType::F32 || uses.get(w.as_str()) != Some(&1) {
            continue;
        }
        let trans_b = n
            .attrs
            .iter()
            .any(|(k, v)| k == "transB" && matches!(v, Attr::Int(1)));
        let axis = match n.op_type.as_str() {
            "MatMul" if t.shape.len() == 2 => 1,
            "Gemm" if trans_b => 0,
            "Gemm" => 1,
            "Conv" => 0,
            _ => continue,
        };
        weight_axis.insert(w.clone(), axis);
    }
    let mut initializers = Vec::new();
    let mut pre: Vec<Node> = Vec::new();
    for (name, t) in &g.initializers {
        let Some(&axis) = weight_axis.get(name) else {
            initializers.push((name.clone(), t.clone()));
            continue;
        };
        let w = t.to_f32_vec()?;
        let (q, scales) = quantize_channels(&w, &t.shape, axis);
        let c = t.shape[axis];
        let (qn, sn, zn) = (
            format!("{name}.qweight"),
            format!("{name}.scale"),
            format!("{name}.zero_point"),
        );
        initializers.push((qn.clone(), int8_tensor(t.shape.clone(), q)));
        initializers.push((sn.clone(), Tensor::from_f32(vec![c], &scales)));
        initializers.push((zn.clone(), int8_tensor(vec![c], vec![0; c])));
        pre.push(node(
            format!("{name}/DequantizeLinear"),
            "DequantizeLinear",
            vec![qn, sn, zn],
            name.clone(),
            vec![("axis".into(), Attr::Int(axis as i64))],
        ));
    }
    // activations: one Q/DQ pair per observed tensor, before its first use
    let mut qdq_of: HashMap<String, String> = HashMap::new();
    let mut nodes = pre;
    for n in &g.nodes {
        let mut n2 = n.clone();
        let quantised_op = matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv")
            && n.inputs.len() >= 2
            && weight_axis.contains_key(&n.inputs[1]);
        if quantised_op {
            let a = n.inputs[0].clone();
            let r = &ranges[&a];
            let deq = match qdq_of.get(&a) {
                Some(d) => d.clone(),
                None => {
                    let (sn, zn) = (format!("{a}.act_scale"), format!("{a}.act_zero_point"));
                    initializers.push((sn.clone(), Tensor::from_f32(vec![], &[r.scale()])));
                    initializers.push((zn.clone(), int8_tensor(vec![], vec![0])));
                    let (qv, dv) = (format!("{a}/quantized"), format!("{a}/dequantized"));
                    nodes.push(node(
                        format!("{a}/QuantizeLinear"),
                        "QuantizeLinear",
                        vec![a.clone(), sn.clone(), zn.clone()],
                        qv.clone(),
                        vec![],
                    ));
                    nodes.push(node(
                        format!("{a}/DequantizeLinear"),
                        "DequantizeLinear",
                        vec![qv, sn, zn],
                        dv.clone(),
                        vec![],
                    ));
                    qdq_of.insert(a.clone(), dv.clone());
                    dv
                }
            };
            n2.inputs[0] = deq;
        }
        nodes.push(n2);
    }
    Ok(Graph {
        name: g.name.clone(),
        doc: format!("{} (int8 QDQ)", g.doc),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes,
        initializers,
    })
}
