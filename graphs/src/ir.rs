//! The graph IR: values, nodes, initializers and typed graph I/O, built
//! through a [`GraphBuilder`] and named through a [`Scope`]'s dotted path.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::tensor::{DType, Tensor, WeightSource};
use crate::{Error, Result};

/// A dimension of a graph input or output: fixed or symbolic (`"batch"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Fixed(v as i64)
    }
}

/// A graph input or output: name, element type, shape (an empty `dims`
/// leaves the shape undeclared; the graphs have no scalar I/O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl From<&IoSpec> for flamingo_contract::TensorInfo {
    fn from(io: &IoSpec) -> flamingo_contract::TensorInfo {
        flamingo_contract::TensorInfo {
            name: io.name.clone(),
            dtype: io.dtype.name().to_string(),
            shape: io
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => serde_json::Value::from(*v),
                    Dim::Sym(s) => serde_json::Value::from(s.as_str()),
                })
                .collect(),
        }
    }
}

/// A node attribute.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(Tensor),
}

/// One operator application.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// Operator domain: `""` for standard ONNX, `"com.microsoft"` for contrib ops.
    pub domain: String,
    /// Input value names; `""` marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
    /// Must run in float32 even in a reduced-precision graph (norm
    /// statistics, softmax, gates, positions). Written as the node's
    /// doc string [`KEEP_FP32`].
    pub keep_fp32: bool,
}

/// Doc string marking a node that stays float32 under precision rewrites.
pub const KEEP_FP32: &str = "flamingo:keep_fp32";

/// A finished graph, ready to be written or rewritten.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    pub doc: String,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    pub nodes: Vec<Node>,
    /// Initializers in creation order (deterministic).
    pub initializers: Vec<(String, Tensor)>,
}

impl Graph {
    /// Total bytes of the initializers.
    pub fn weight_bytes(&self) -> usize {
        self.initializers.iter().map(|(_, t)| t.byte_len()).sum()
    }
}

/// A cheap handle to a value (a graph input, an initializer or a node output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(u32);

/// Accumulates nodes and initializers; hands out [`Scope`]s.
pub struct GraphBuilder {
    name: String,
    doc: String,
    values: Vec<String>,
    value_names: HashSet<String>,
    node_names: HashSet<String>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    nodes: Vec<Node>,
    initializers: Vec<(String, Tensor)>,
    init_index: HashMap<String, Value>,
    const_count: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            name: name.to_string(),
            doc: String::new(),
            values: Vec::new(),
            value_names: HashSet::new(),
            node_names: HashSet::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            init_index: HashMap::new(),
            const_count: 0,
        }
    }

    pub fn set_doc(&mut self, doc: &str) {
        self.doc = doc.to_string();
    }

    fn new_value(&mut self, name: String) -> Value {
        self.value_names.insert(name.clone());
        self.values.push(name);
        Value((self.values.len() - 1) as u32)
    }

    /// The value's name in the graph.
    pub fn name_of(&self, v: Value) -> &str {
        &self.values[v.0 as usize]
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, dims: Vec<Dim>) -> Value {
        self.inputs.push(IoSpec {
            name: name.to_string(),
            dtype,
            dims,
        });
        self.new_value(name.to_string())
    }

    /// Declares `v` a graph output named `name` (an Identity renames it).
    pub fn output(&mut self, v: Value, name: &str, dtype: DType, dims: Vec<Dim>) {
        let src = self.name_of(v).to_string();
        let node_name = self.unique_node_name(&format!("output.{name}"));
        self.nodes.push(Node {
            name: node_name,
            op_type: "Identity".into(),
            domain: String::new(),
            inputs: vec![src],
            outputs: vec![name.to_string()],
            attrs: vec![],
            keep_fp32: true,
        });
        self.value_names.insert(name.to_string());
        self.outputs.push(IoSpec {
            name: name.to_string(),
            dtype,
            dims,
        });
    }

    /// A scope rooted at `path` drawing weights from `w`.
    pub fn scope<'a>(&'a mut self, w: &'a dyn WeightSource, path: &str) -> Scope<'a> {
        Scope {
            b: self,
            w,
            path: path.to_string(),
            keep_fp32: false,
        }
    }

    fn unique_node_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.node_names.contains(&name) || self.value_names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.node_names.insert(name.clone());
        name
    }

    fn add_initializer(&mut self, name: String, t: Tensor) -> Value {
        if let Some(v) = self.init_index.get(&name) {
            return *v;
        }
        let v = self.new_value(name.clone());
        self.initializers.push((name.clone(), t));
        self.init_index.insert(name, v);
        v
    }

    /// Checks that every node input is defined before use and returns the graph.
    pub fn finish(self) -> Result<Graph> {
        let mut defined: HashSet<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        defined.extend(self.initializers.iter().map(|(n, _)| n.as_str()));
        for n in &self.nodes {
            for i in &n.inputs {
                if !i.is_empty() && !defined.contains(i.as_str()) {
                    return Err(Error::Graph {
                        graph: self.name.clone(),
                        message: format!("node `{}` reads undefined value `{i}`", n.name),
                    });
                }
            }
            defined.extend(n.outputs.iter().map(|o| o.as_str()));
        }
        for o in &self.outputs {
            if !defined.contains(o.name.as_str()) {
                return Err(Error::Graph {
                    graph: self.name.clone(),
                    message: format!("output `{}` is never computed", o.name),
                });
            }
        }
        let mut g = Graph {
            name: self.name,
            doc: self.doc,
            inputs: self.inputs,
            outputs: self.outputs,
            nodes: self.nodes,
            initializers: self.initializers,
        };
        fold_output_identities(&mut g);
        Ok(g)
    }
}

/// Removes the Identity that names a graph output where the producing node
/// can write the output itself (its value is no graph input, initializer or
/// other output): runtimes copy on Identity, and for the decoder's `present`
/// outputs that would be the whole KV cache on every step.
fn fold_output_identities(g: &mut Graph) {
    let outputs: HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let mut fixed: HashSet<String> = g.inputs.iter().map(|i| i.name.clone()).collect();
    fixed.extend(g.initializers.iter().map(|(n, _)| n.clone()));
    let mut renames: HashMap<String, String> = HashMap::new();
    let mut drop = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op_type != "Identity" || n.inputs.len() != 1 || n.outputs.len() != 1 {
            continue;
        }
        let (src, out) = (&n.inputs[0], &n.outputs[0]);
        if !outputs.contains(out)
            || outputs.contains(src)
            || fixed.contains(src)
            || renames.contains_key(src)
        {
            continue;
        }
        renames.insert(src.clone(), out.clone());
        drop.insert(i);
    }
    let mut i = 0;
    g.nodes.retain(|_| {
        i += 1;
        !drop.contains(&(i - 1))
    });
    for n in &mut g.nodes {
        for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
            if let Some(r) = renames.get(v.as_str()) {
                *v = r.clone();
            }
        }
    }
}

/// A dotted naming path into a graph under construction; `s.pp("attn")`
/// extends it. The path names both weights and nodes, so a node reads
/// `perceiver.layers.0.0.to_q` in Netron, like the checkpoint tensor it uses.
pub struct Scope<'a> {
    pub(crate) b: &'a mut GraphBuilder,
    w: &'a dyn WeightSource,
    path: String,
    keep_fp32: bool,
}

impl<'a> Scope<'a> {
    /// A child scope `path.name`.
    pub fn pp(&mut self, name: impl fmt::Display) -> Scope<'_> {
        let path = join(&self.path, &name.to_string());
        Scope {
            b: self.b,
            w: self.w,
            path,
            keep_fp32: self.keep_fp32,
        }
    }

    /// The same path, but every node made through it stays float32 under
    /// precision rewrites (an fp32 island).
    pub fn fp32(&mut self) -> Scope<'_> {
        Scope {
            b: self.b,
            w: self.w,
            path: self.path.clone(),
            keep_fp32: true,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn builder(&mut self) -> &mut GraphBuilder {
        self.b
    }

    /// The full dotted name of `name` under this scope.
    pub fn full(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Whether the weight source has `path.name`.
    pub fn has_weight(&self, name: &str) -> bool {
        self.w.contains(&self.full(name))
    }

    /// Fetches `path.name` as it is stored, checking its shape.
    pub fn weight_tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full(name);
        let t = self.w.get_shaped(&full, shape)?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                name: full,
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// The shape of `path.name` in the source (to read sizes from tensors).
    pub fn weight_shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.w.get(&self.full(name))?.shape)
    }

    /// `path.name` as an initializer, shape-checked.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        let t = self.weight_tensor(name, shape)?;
        Ok(self.initializer(name, t))
    }

    /// `path.name`, an `nn.Linear` weight `[out, in]`, stored transposed as
    /// `[in, out]` for `MatMul`.
    pub fn weight_t(&mut self, name: &str, out_in: [usize; 2]) -> Result<Value> {
        let t = self.weight_tensor(name, &out_in)?.transpose_2d()?;
        Ok(self.initializer(name, t))
    }

    /// Registers `t` as the initializer `path.name` (deduplicated by name).
    pub fn initializer(&mut self, name: &str, t: Tensor) -> Value {
        let full = self.full(name);
        self.b.add_initializer(full, t)
    }

    /// An anonymous constant (initializer named after the scope).
    pub fn constant(&mut self, t: Tensor) -> Value {
        self.b.const_count += 1;
        let name = join(&self.path, &format!("const_{}", self.b.const_count));
        self.b.add_initializer(name, t)
    }

    pub fn const_i64(&mut self, values: &[i64]) -> Value {
        self.constant(Tensor::from_i64(vec![values.len()], values))
    }

    pub fn scalar_f32(&mut self, v: f32) -> Value {
        self.constant(Tensor::from_f32(vec![], &[v]))
    }

    pub fn scalar_i64(&mut self, v: i64) -> Value {
        self.constant(Tensor::from_i64(vec![], &[v]))
    }

    /// Adds a node with `n_out` outputs.
    pub fn node_n(
        &mut self,
        op_type: &str,
        inputs: &[Option<Value>],
        attrs: Vec<(&str, Attr)>,
        n_out: usize,
    ) -> Vec<Value> {
        self.node_in_domain("", op_type, inputs, attrs, n_out)
    }

    /// Adds a node of a non-standard domain (e.g. `com.microsoft`).
    pub fn node_in_domain(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[Option<Value>],
        attrs: Vec<(&str, Attr)>,
        n_out: usize,
    ) -> Vec<Value> {
        let base = if self.path.is_empty() {
            op_type.to_string()
        } else if self.b.node_names.contains(&self.path) || self.b.value_names.contains(&self.path)
        {
            format!("{}/{op_type}", self.path)
        } else {
            self.path.clone()
        };
        let name = self.b.unique_node_name(&base);
        let inputs = inputs
            .iter()
            .map(|v| v.map(|v| self.b.name_of(v).to_string()).unwrap_or_default())
            .collect();
        let outs: Vec<String> = if n_out == 1 {
            vec![name.clone()]
        } else {
            (0..n_out).map(|i| format!("{name}:{i}")).collect()
        };
        let values = outs.iter().map(|o| self.b.new_value(o.clone())).collect();
        self.b.nodes.push(Node {
            name,
            op_type: op_type.to_string(),
            domain: domain.to_string(),
            inputs,
            outputs: outs,
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            keep_fp32: self.keep_fp32,
        });
        values
    }

    /// Adds a single-output node.
    pub fn node(&mut self, op_type: &str, inputs: &[Value], attrs: Vec<(&str, Attr)>) -> Value {
        let ins: Vec<Option<Value>> = inputs.iter().map(|v| Some(*v)).collect();
        self.node_n(op_type, &ins, attrs, 1)[0]
    }
}

fn join(path: &str, name: &str) -> String {
    match (path.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => path.to_string(),
        _ => format!("{path}.{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoWeights;

    #[test]
    fn node_names_follow_the_scope_path_and_stay_unique() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DType::F32, vec![Dim::Fixed(2)]);
        let mut s = g.scope(&NoWeights, "layers");
        let mut layer = s.pp(3);
        let mut a = layer.pp("attn");
        let y = a.add(x, x);
        let z = a.add(y, y);
        g.output(z, "y", DType::F32, vec![Dim::Fixed(2)]);
        let graph = g.finish().unwrap();
        assert_eq!(graph.nodes[0].name, "layers.3.attn");
        assert_eq!(graph.nodes[1].name, "layers.3.attn/Add");
    }

    #[test]
    fn finish_rejects_an_output_never_computed() {
        let mut g = GraphBuilder::new("t");
        g.outputs.push(IoSpec {
            name: "nope".into(),
            dtype: DType::F32,
            dims: vec![],
        });
        assert!(g.finish().is_err());
    }

    #[test]
    fn missing_weight_names_the_full_path() {
        let mut g = GraphBuilder::new("t");
        let mut s = g.scope(&NoWeights, "visual");
        let err = s.pp("conv1").weight("weight", &[1]).unwrap_err();
        assert!(err.to_string().contains("visual.conv1.weight"), "{err}");
    }
}
