//! Element types of every value of a graph, inferred from its inputs,
//! initializers and the (small) set of operators the exporter emits.

use std::collections::HashMap;

use flamingo_graphs::{Attr, DType, Graph};

/// Value name -> element type.
pub fn infer(g: &Graph) -> Result<HashMap<String, DType>, String> {
    let mut t: HashMap<String, DType> = HashMap::new();
    for i in &g.inputs {
        t.insert(i.name.clone(), i.dtype);
    }
    for (n, init) in &g.initializers {
        t.insert(n.clone(), init.dtype);
    }
    for n in &g.nodes {
        let input = |i: usize| -> Result<DType, String> {
            let name = n
                .inputs
                .get(i)
                .ok_or_else(|| format!("node `{}` lacks input {i}", n.name))?;
            t.get(name)
                .copied()
                .ok_or_else(|| format!("node `{}`: unknown type of `{name}`", n.name))
        };
        let out = match n.op_type.as_str() {
            "Shape" => DType::I64,
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or"
            | "Not" => DType::Bool,
            "Cast" => match n.attrs.iter().find(|(k, _)| k == "to") {
                Some((_, Attr::Int(code))) => from_code(*code)?,
                _ => return Err(format!("Cast `{}` without `to`", n.name)),
            },
            "Where" => input(1)?,
            "DequantizeLinear" => DType::F32,
            "QuantizeLinear" => DType::I8,
            "MatMulNBits" => input(0)?,
            _ => input(0)?,
        };
        for o in &n.outputs {
            t.insert(o.clone(), out);
        }
    }
    Ok(t)
}

pub fn from_code(code: i64) -> Result<DType, String> {
    DType::from_onnx_code(code).ok_or_else(|| format!("unsupported Cast target {code}"))
}
