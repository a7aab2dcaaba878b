//! float32 -> float16 with float32 islands.
//!
//! Every float32 value becomes float16 except the outputs of nodes marked
//! `keep_fp32` and the initializers only they read. A Cast is inserted
//! wherever a value crosses between the two (once per value and direction).
//! Graph I/O stays float32. Float constants are clamped to the float16 range,
//! so `finfo(float32).min` mask fills become -65504 rather than -inf.

use std::collections::{HashMap, HashSet};

use flamingo_graphs::{Attr, DType, Graph, Node, Tensor};
use half::f16;

use crate::dtypes;

fn f32_to_f16_bytes(b: &[u8]) -> Vec<u8> {
    b.chunks_exact(4)
        .flat_map(|c| {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let v = if v.is_finite() {
                v.clamp(-65504.0, 65504.0)
            } else {
                v
            };
            f16::from_f32(v).to_le_bytes()
        })
        .collect()
}

/// `g` with every float32 graph output written by a float32 Identity (an
/// island), so that the conversion casts it back at the boundary: outputs
/// produced directly by another node are renamed `<output>/fp16` first.
fn name_float_outputs(g: &Graph) -> Graph {
    let mut g = g.clone();
    let mut names: HashSet<String> = g.nodes.iter().map(|n| n.name.clone()).collect();
    let outputs: Vec<String> = g
        .outputs
        .iter()
        .filter(|o| o.dtype == DType::F32)
        .map(|o| o.name.clone())
        .collect();
    for o in outputs {
        let Some(p) = g.nodes.iter().position(|n| n.outputs.contains(&o)) else {
            continue;
        };
        if g.nodes[p].keep_fp32 {
            continue;
        }
        let inner = format!("{o}/fp16");
        for n in &mut g.nodes {
            for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
                if *v == o {
                    *v = inner.clone();
                }
            }
        }
        let mut name = format!("output.{o}");
        while names.contains(&name) {
            name.push('_');
        }
        names.insert(name.clone());
        g.nodes.push(Node {
            name,
            op_type: "Identity".into(),
            domain: String::new(),
            inputs: vec![inner],
            outputs: vec![o],
            attrs: vec![],
            keep_fp32: true,
        });
    }
    g
}

/// The tensor as float16 (lazily).
pub fn tensor_to_f16(t: Tensor) -> Tensor {
    let shape = t.shape.clone();
    t.map(DType::F16, shape, f32_to_f16_bytes)
}

/// Rewrites an float32 graph to float16 (see the module doc).
pub fn to_fp16(g: &Graph) -> Result<Graph, String> {
    let g = &name_float_outputs(g);
    let types = dtypes::infer(g)?;
    let is_f32 = |v: &str| types.get(v) == Some(&DType::F32);
    // initializers read only by fp32 islands stay float32
    let mut readers: HashMap<&str, (bool, bool)> = HashMap::new();
    for n in &g.nodes {
        for i in &n.inputs {
            let e = readers.entry(i.as_str()).or_default();
            if n.keep_fp32 {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
    }
    let mut new_type: HashMap<String, DType> = HashMap::new();
    let mut initializers = Vec::new();
    for (name, t) in &g.initializers {
        let island_only = readers.get(name.as_str()).is_some_and(|r| r.0 && !r.1);
        if t.dtype == DType::F32 && !island_only {
            initializers.push((name.clone(), tensor_to_f16(t.clone())));
            new_type.insert(name.clone(), DType::F16);
        } else {
            initializers.push((name.clone(), t.clone()));
            new_type.insert(name.clone(), t.dtype);
        }
    }
    for i in &g.inputs {
        new_type.insert(i.name.clone(), i.dtype);
    }
    for n in &g.nodes {
        for o in &n.outputs {
            let t = match types.get(o) {
                Some(DType::F32) if !n.keep_fp32 => DType::F16,
                Some(t) => *t,
                None => return Err(format!("no type for `{o}`")),
            };
            new_type.insert(o.clone(), t);
        }
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(g.nodes.len() * 2);
    let mut casts: HashMap<(String, DType), String> = HashMap::new();
    let mut names: HashSet<String> = g.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &g.nodes {
        let want = if n.keep_fp32 { DType::F32 } else { DType::F16 };
        let mut node = n.clone();
        let skip_inputs: &[usize] = match n.op_type.as_str() {
            // shape-like inputs and Cast sources keep their type
            "Cast" | "Shape" => &[0],
            _ => &[],
        };
        for (idx, inp) in node.inputs.iter_mut().enumerate() {
            if inp.is_empty() || skip_inputs.contains(&idx) || !is_f32(inp) {
                continue;
            }
            let have = new_type.get(inp.as_str()).copied().unwrap_or(DType::F32);
            if have == want {
                continue;
            }
            let key = (inp.clone(), want);
            let cast_out = match casts.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let suffix = if want == DType::F16 { "fp16" } else { "fp32" };
                    let mut cname = format!("{inp}/to_{suffix}");
                    while names.contains(&cname) {
                        cname.push('_');
                    }
                    names.insert(cname.clone());
                    nodes.push(Node {
                        name: cname.clone(),
                        op_type: "Cast".into(),
                        domain: String::new(),
                        inputs: vec![inp.clone()],
                        outputs: vec![cname.clone()],
                        attrs: vec![("to".into(), Attr::Int(want.onnx_code() as i64))],
                        keep_fp32: want == DType::F32,
                    });
                    casts.insert(key, cname.clone());
                    cname
                }
            };
            *inp = cast_out;
        }
        // float casts outside islands now produce float16
        if n.op_type == "Cast" && !n.keep_fp32 {
            for (k, a) in node.attrs.iter_mut() {
                if k == "to" && matches!(a, Attr::Int(c) if *c == DType::F32.onnx_code() as i64) {
                    *a = Attr::Int(DType::F16.onnx_code() as i64);
                }
            }
        }
        // float tensor attributes (ConstantOfShape values and the like)
        for (_, a) in node.attrs.iter_mut() {
            if let Attr::Tensor(t) = a {
                if t.dtype == DType::F32 && !n.keep_fp32 {
                    *t = tensor_to_f16(t.clone());
                }
            }
        }
        nodes.push(node);
    }
    Ok(Graph {
        name: g.name.clone(),
        doc: format!("{} (float16)", g.doc),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes,
        initializers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamingo_graphs::{Dim, GraphBuilder, NoWeights};

    #[test]
    fn islands_stay_fp32_and_the_mask_fill_becomes_fp16_safe() {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", DType::F32, vec![Dim::Fixed(4)]);
        let c = b.input("c", DType::Bool, vec![Dim::Fixed(4)]);
        let y = {
            let mut s = b.scope(&NoWeights, "attn");
            let fill = s.scalar_f32(f32::MIN);
            let masked = s.where_(c, x, fill);
            s.fp32().softmax(masked, -1)
        };
        b.output(y, "y", DType::F32, vec![Dim::Fixed(4)]);
        let g = to_fp16(&b.finish().unwrap()).unwrap();
        let (_, fill) = &g.initializers[0];
        assert_eq!(fill.dtype, DType::F16);
        let bytes = fill.bytes().unwrap();
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), -65504.0);
        let softmax = g.nodes.iter().find(|n| n.op_type == "Softmax").unwrap();
        let feeder = g
            .nodes
            .iter()
            .find(|n| n.outputs[0] == softmax.inputs[0])
            .unwrap();
        assert_eq!(
            feeder.op_type, "Cast",
            "softmax reads a float32 cast of the fp16 scores"
        );
        let where_ = g.nodes.iter().find(|n| n.op_type == "Where").unwrap();
        assert!(g
            .nodes
            .iter()
            .any(|n| n.op_type == "Cast" && n.outputs[0] == where_.inputs[1]));
        // the output stays float32
        assert_eq!(g.outputs[0].dtype, DType::F32);
    }
}
