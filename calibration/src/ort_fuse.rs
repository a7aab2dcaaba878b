//! ONNX Runtime contrib-op fusions for decoders that only ONNX Runtime runs
//! (the `MatMulNBits` exports).
//!
//! Each rewrite matches the exact subgraph our decoder builder emits and
//! leaves anything else alone:
//!
//! - self-attention with a KV cache (`Concat` of the past, `q·kᵀ·scale`,
//!   optional ALiBi, the causal/padding `Where`, softmax, `·v`; equal query
//!   and key/value heads, no rotary) → `com.microsoft.GroupQueryAttention`
//!   on the packed QKV projection (when q, k, v are split from one), with
//!   the past as `past_key`/`past_value`, `seqlens_k = width(mask) - 1` for
//!   every row and one shared additive `attention_bias` (`Where(allowed,
//!   alibi or 0, fill)`); its past and present may be one buffer, updated in
//!   place ([`kv_update`]);
//! - the gated cross-attention over the media K/V cache → `MultiHeadAttention`
//!   with the BNSH media keys/values and a shared bias `Where(xmask, 0,
//!   -max)`, its rows zeroed where no media precedes the token;
//! - exact-erf GELU (`0.5·x·(1 + erf(x/√2))`) → `com.microsoft.Gelu`;
//! - a residual `Add` feeding a `LayerNormalization` →
//!   `com.microsoft.SkipLayerNormalization` (the sum kept as its fourth
//!   output where anything else reads it);
//! - a constant gate (`tanh(g)`) scaling a `MatMulNBits` output → folded
//!   into its block scales.
//!
//! The result equals the unfused graph to float32 round-off (tested on the
//! fixtures). Only for decoder graphs, whose hidden states are `[B, S, D]`.

use std::collections::HashMap;

use flamingo_contract::{io, KvUpdate};
use flamingo_graphs::{kernels, Attr, DType, Graph, Node, Tensor};

/// What [`fuse_decoder`] rewrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fused {
    pub self_attention: usize,
    pub cross_attention: usize,
    pub gelu: usize,
    pub skip_layer_norm: usize,
    /// Constant output gates folded into `MatMulNBits` block scales.
    pub gates: usize,
}

impl Fused {
    pub fn total(&self) -> usize {
        self.self_attention + self.cross_attention + self.gelu + self.skip_layer_norm + self.gates
    }
}

struct Index<'g> {
    g: &'g Graph,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    inits: HashMap<&'g str, &'g Tensor>,
    outputs: Vec<&'g str>,
}

impl<'g> Index<'g> {
    fn new(g: &'g Graph) -> Index<'g> {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.as_str(), i);
            }
            for x in &n.inputs {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        Index {
            g,
            producer,
            consumers,
            inits: g
                .initializers
                .iter()
                .map(|(n, t)| (n.as_str(), t))
                .collect(),
            outputs: g.outputs.iter().map(|o| o.name.as_str()).collect(),
        }
    }

    fn is_input(&self, v: &str) -> bool {
        self.g.inputs.iter().any(|x| x.name == v)
    }

    fn node(&self, i: usize) -> &'g Node {
        &self.g.nodes[i]
    }

    /// The node producing `v` when it is `op`.
    fn prod(&self, v: &str, op: &str) -> Option<usize> {
        self.producer
            .get(v)
            .copied()
            .filter(|&i| self.node(i).op_type == op && self.node(i).domain.is_empty())
    }

    /// The single reader of `v` (not a graph output) when it is `op`.
    fn only_cons(&self, v: &str, op: &str) -> Option<usize> {
        match self.consumers.get(v).map(|c| c.as_slice()) {
            Some([i]) if self.node(*i).op_type == op && !self.outputs.contains(&v) => Some(*i),
            _ => None,
        }
    }

    fn readers(&self, v: &str) -> usize {
        self.consumers.get(v).map_or(0, |c| c.len()) + usize::from(self.outputs.contains(&v))
    }

    fn consts(&self, v: &str) -> Option<Vec<f64>> {
        let t = self.inits.get(v)?;
        let b = t.bytes().ok()?;
        match t.dtype {
            DType::F32 => Some(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect(),
            ),
            DType::I64 => Some(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                    .collect(),
            ),
            _ => None,
        }
    }

    fn scalar(&self, v: &str) -> Option<f64> {
        match self.consts(v)?.as_slice() {
            [x] => Some(*x),
            _ => None,
        }
    }

    fn perm(&self, i: usize) -> Option<&'g [i64]> {
        self.node(i).attrs.iter().find_map(|(k, a)| match a {
            Attr::Ints(p) if k == "perm" => Some(p.as_slice()),
            _ => None,
        })
    }

    /// `Transpose(perm)(Reshape(x, [0, 0, H, Dh]))`: (x, H, the two nodes).
    fn split_heads(&self, v: &str) -> Option<(&'g str, i64, [usize; 2])> {
        let t = self.prod(v, "Transpose")?;
        (self.perm(t)? == [0, 2, 1, 3]).then_some(())?;
        let r = self.prod(&self.node(t).inputs[0], "Reshape")?;
        let shape = self.consts(&self.node(r).inputs[1])?;
        match shape.as_slice() {
            [a, b, h, _] if *a == 0.0 && *b == 0.0 && *h >= 1.0 => {
                Some((self.node(r).inputs[0].as_str(), *h as i64, [t, r]))
            }
            _ => None,
        }
    }

    /// `Reshape(Transpose(0,2,1,3)(x), [0, 0, D])` read from `x`: (output, nodes).
    fn merge_heads(&self, x: &str) -> Option<(&'g str, [usize; 2])> {
        let t = self.only_cons(x, "Transpose")?;
        (self.perm(t)? == [0, 2, 1, 3]).then_some(())?;
        let r = self.only_cons(&self.node(t).outputs[0], "Reshape")?;
        let shape = self.consts(&self.node(r).inputs[1])?;
        (shape.len() == 3 && shape[0] == 0.0 && shape[1] == 0.0).then_some(())?;
        Some((self.node(r).outputs[0].as_str(), [t, r]))
    }
}

fn node(name: String, op: &str, domain: &str, inputs: Vec<String>, outputs: Vec<String>) -> Node {
    Node {
        name,
        op_type: op.into(),
        domain: domain.into(),
        inputs,
        outputs,
        attrs: vec![],
        keep_fp32: false,
    }
}

fn mha(name: String, inputs: Vec<String>, outputs: Vec<String>, heads: i64, scale: f64) -> Node {
    let mut n = node(name, "MultiHeadAttention", "com.microsoft", inputs, outputs);
    n.attrs = vec![
        ("num_heads".into(), Attr::Int(heads)),
        ("scale".into(), Attr::Float(scale as f32)),
    ];
    n
}

/// The manifest's `kv_update` of a decoder whose every past is read by
/// `GroupQueryAttention` alone: `in-place` (see
/// `flamingo_contract::GraphInfo::kv_update`).
pub fn kv_update(g: &Graph) -> Option<KvUpdate> {
    let mut pasts = g
        .inputs
        .iter()
        .filter(|i| i.name.starts_with("past_key_values."))
        .peekable();
    pasts.peek()?;
    pasts
        .all(|p| {
            let mut readers = g.nodes.iter().filter(|n| n.inputs.contains(&p.name));
            readers.clone().next().is_some() && readers.all(|n| n.op_type == "GroupQueryAttention")
        })
        .then_some(KvUpdate::InPlace)
}

/// Self-attention over the KV cache. `GroupQueryAttention` rather than
/// `MultiHeadAttention`: it takes the packed QKV projection as it is, and
/// its past/present may share one buffer longer than the context, updated
/// in place ([`kv_update`]).
fn gqa(name: String, inputs: Vec<String>, outputs: Vec<String>, heads: i64, scale: f64) -> Node {
    let mut n = node(
        name,
        "GroupQueryAttention",
        "com.microsoft",
        inputs,
        outputs,
    );
    n.attrs = vec![
        ("num_heads".into(), Attr::Int(heads)),
        ("kv_num_heads".into(), Attr::Int(heads)),
        ("scale".into(), Attr::Float(scale as f32)),
    ];
    n
}

/// New nodes, each placed before the node at its position.
struct Plan {
    insert: Vec<(usize, Node)>,
}

/// Marks a match's nodes removed, unless an earlier match took one of them.
fn claim(removed: &mut [bool], nodes: &[usize]) -> bool {
    if nodes.iter().any(|&i| removed[i]) {
        return false;
    }
    for &i in nodes {
        removed[i] = true;
    }
    true
}

/// Applies the fusions described in the module docs.
pub fn fuse_decoder(g: &Graph) -> (Graph, Fused) {
    fuse_decoder_with(g, true)
}

/// The `fp32-ort` precision (`flamingo convert --precision fp32-ort`):
/// the fp32 export's decoder with ONNX Runtime's fused kernels
/// ([`fuse_decoder_with`]), its other graphs as they are. Written to `out`
/// as [`crate::convert::convert_fp32`] writes (temp path, renamed); returns
/// the manifest and what was fused.
pub fn fuse_export(
    input: &std::path::Path,
    out: &std::path::Path,
    force: bool,
    in_place_kv: bool,
    progress: &mut dyn flamingo_export::Progress,
) -> flamingo_export::Result<(flamingo_contract::Manifest, Fused)> {
    let fused = std::cell::Cell::new(Fused::default());
    let m = crate::convert::convert_fp32(
        input,
        out,
        force,
        flamingo_contract::Precision::Fp32Ort,
        &|role, g| {
            if role != flamingo_contract::GraphRole::Decoder {
                return Ok(None);
            }
            let (g, n) = fuse_decoder_with(g, in_place_kv);
            fused.set(n);
            Ok(Some(g))
        },
        progress,
    )?;
    Ok((m, fused.get()))
}

/// [`fuse_decoder`]; with `in_place_kv` false, self-attention becomes
/// `MultiHeadAttention` over the concatenated cache instead of
/// `GroupQueryAttention` (for the CUDA provider, which has no float32
/// `GroupQueryAttention`).
pub fn fuse_decoder_with(g: &Graph, in_place_kv: bool) -> (Graph, Fused) {
    let (folded, gates) = fold_gates(g);
    let (out, mut fused) = fuse(folded.as_ref().unwrap_or(g), in_place_kv);
    fused.gates = gates;
    (out, fused)
}

/// `Mul(MatMulNBits(x), g)` (or `MatMulInt8`, `MatMulInt4`) with a constant gate `g` (or
/// `Tanh(g)`), the product read alone: the gate folds into the scales,
/// `dequant(q, s)·g = dequant(q, s·g)`. The gated cross-attention's
/// `tanh(attn_gate)` and `tanh(ff_gate)`.
fn fold_gates(g: &Graph) -> (Option<Graph>, usize) {
    let ix = Index::new(g);
    let mut scaled: HashMap<&str, f64> = HashMap::new();
    let mut renamed: HashMap<usize, String> = HashMap::new();
    let mut removed = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op_type != "Mul" || !n.domain.is_empty() || n.inputs.len() != 2 {
            continue;
        }
        for (x, gv) in [(&n.inputs[0], &n.inputs[1]), (&n.inputs[1], &n.inputs[0])] {
            let Some(&mm) = ix.producer.get(x.as_str()) else {
                continue;
            };
            let m = ix.node(mm);
            let scales = m.inputs.get(2).map(|s| s.as_str()).unwrap_or("");
            let f32_scales = ix.inits.get(scales).is_some_and(|t| t.dtype == DType::F32);
            let scaled_product = (m.op_type == "MatMulNBits" && m.domain == "com.microsoft")
                || ([kernels::int8::OP, kernels::int4::OP].contains(&m.op_type.as_str())
                    && m.domain == kernels::int8::DOMAIN);
            if !scaled_product
                || ix.readers(x) != 1
                || !f32_scales
                || ix.readers(scales) != 1
                || renamed.contains_key(&mm)
            {
                continue;
            }
            let tanh = ix.prod(gv, "Tanh");
            let gate = match tanh {
                Some(t) => ix.scalar(&ix.node(t).inputs[0]).map(f64::tanh),
                None => ix.scalar(gv),
            };
            let Some(gate) = gate else { continue };
            if let Some(t) = tanh.filter(|_| ix.readers(gv) == 1) {
                removed[t] = true;
            }
            removed[i] = true;
            scaled.insert(scales, gate);
            renamed.insert(mm, n.outputs[0].clone());
            break;
        }
    }
    if scaled.is_empty() {
        return (None, 0);
    }
    let mut initializers = Vec::with_capacity(g.initializers.len());
    for (name, t) in &g.initializers {
        match scaled.get(name.as_str()) {
            Some(&gate) => {
                let Ok(v) = t.to_f32_vec() else {
                    return (None, 0);
                };
                let v: Vec<f32> = v.iter().map(|s| (*s as f64 * gate) as f32).collect();
                initializers.push((name.clone(), Tensor::from_f32(t.shape.clone(), &v)));
            }
            None => initializers.push((name.clone(), t.clone())),
        }
    }
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, n) in g.nodes.iter().enumerate() {
        if removed[i] {
            continue;
        }
        let mut n = n.clone();
        if let Some(out) = renamed.get(&i) {
            n.outputs[0] = out.clone();
        }
        nodes.push(n);
    }
    (Some(with_body(g, nodes, initializers)), renamed.len())
}

/// `g`'s name, doc and I/O with new nodes and initializers.
fn with_body(g: &Graph, nodes: Vec<Node>, initializers: Vec<(String, Tensor)>) -> Graph {
    Graph {
        name: g.name.clone(),
        doc: g.doc.clone(),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes,
        initializers,
    }
}

fn fuse(g: &Graph, in_place_kv: bool) -> (Graph, Fused) {
    let ix = Index::new(g);
    let mut fused = Fused::default();
    let mut plan = Plan { insert: vec![] };
    let mut extra_inits: Vec<(String, Tensor)> = vec![];
    let zero = "ort_fuse.zero".to_string();
    let squeeze_axes = "ort_fuse.axes_1".to_string();
    let mut shared: HashMap<Vec<String>, String> = HashMap::new();
    let mut removed = vec![false; g.nodes.len()];
    // GroupQueryAttention's scalar/index constants
    let (index_0, index_1, one64) = (
        "ort_fuse.index_0".to_string(),
        "ort_fuse.index_1".to_string(),
        "ort_fuse.one_i64".to_string(),
    );
    // a shared node (one per op, inputs and attributes) computed once,
    // placed before its first user at `at`
    let mut shared_node =
        |op: &str, inputs: Vec<String>, attrs: Vec<(String, Attr)>, at: usize, plan: &mut Plan| {
            let mut key = vec![op.to_string(), format!("{attrs:?}")];
            key.extend(inputs.iter().cloned());
            if let Some(v) = shared.get(&key) {
                return v.clone();
            }
            let out = format!("ort_fuse.{}_{}", op.to_lowercase(), shared.len());
            let mut n = node(out.clone(), op, "", inputs, vec![out.clone()]);
            n.attrs = attrs;
            plan.insert.push((at, n));
            shared.insert(key, out.clone());
            out
        };
    let int32 = || vec![("to".to_string(), Attr::Int(6))];

    for (ci, c) in g.nodes.iter().enumerate() {
        // ---- self-attention: Concat(past_k, split_heads(k)) -> present_k
        if c.op_type == "Concat" && c.inputs.len() == 2 && ix.is_input(&c.inputs[0]) {
            let Some(mut m) = match_self_attention(&ix, ci) else {
                continue;
            };
            if !in_place_kv {
                m.packed = None;
            }
            let mut nodes = m.nodes.clone();
            nodes.extend(m.packed.as_ref().map(|(_, split)| *split));
            if !claim(&mut removed, &nodes) {
                continue;
            }
            let bias = shared_node(
                "Where",
                vec![
                    m.allowed.clone(),
                    m.alibi.clone().unwrap_or(zero.clone()),
                    m.fill.clone(),
                ],
                vec![],
                m.place,
                &mut plan,
            );
            if !in_place_kv {
                plan.insert.push((
                    m.place,
                    mha(
                        format!("{}/MultiHeadAttention", c.name),
                        vec![
                            m.q,
                            m.k,
                            m.v,
                            String::new(),
                            String::new(),
                            bias,
                            m.past_k,
                            m.past_v,
                        ],
                        vec![m.out, m.present_k, m.present_v],
                        m.heads,
                        m.scale,
                    ),
                ));
                fused.self_attention += 1;
                continue;
            }
            // GroupQueryAttention's lengths, from the mask's width: every
            // row spans the whole `[0, total)` (left padding is masked by
            // the bias), so `seqlens_k = total - 1` for each row
            let at = m.place;
            let mask = vec![io::ATTENTION_MASK.to_string()];
            let mask_shape = shared_node("Shape", mask, vec![], at, &mut plan);
            let width = vec![mask_shape.clone(), index_1.clone()];
            let total64 = shared_node("Gather", width, vec![], at, &mut plan);
            let total = shared_node("Cast", vec![total64.clone()], int32(), at, &mut plan);
            let rows = vec![mask_shape, index_0.clone()];
            let batch = shared_node("Gather", rows, vec![], at, &mut plan);
            let last = shared_node("Sub", vec![total64, one64.clone()], vec![], at, &mut plan);
            let lasts = shared_node("Expand", vec![last, batch], vec![], at, &mut plan);
            let seqlens = shared_node("Cast", vec![lasts], int32(), at, &mut plan);
            let (query, key, value) = match &m.packed {
                Some((qkv, _)) => (qkv.clone(), String::new(), String::new()),
                None => (m.q, m.k, m.v),
            };
            plan.insert.push((
                m.place,
                gqa(
                    format!("{}/GroupQueryAttention", c.name),
                    vec![
                        query,
                        key,
                        value,
                        m.past_k,
                        m.past_v,
                        seqlens,
                        total,
                        String::new(),
                        String::new(),
                        String::new(),
                        bias,
                    ],
                    vec![m.out, m.present_k, m.present_v],
                    m.heads,
                    m.scale,
                ),
            ));
            fused.self_attention += 1;
        }
        // ---- cross-attention: Transpose(media_k, 0,1,3,2) feeding q·kᵀ
        if c.op_type == "Transpose"
            && ix.perm(ci) == Some(&[0, 1, 3, 2])
            && ix.is_input(&c.inputs[0])
        {
            let Some(m) = match_cross_attention(&ix, ci) else {
                continue;
            };
            if !claim(&mut removed, &m.nodes) {
                continue;
            }
            let bias = shared_node(
                "Where",
                vec![m.xmask.clone(), m.zero.clone(), m.fill.clone()],
                vec![],
                m.place,
                &mut plan,
            );
            let no_media = shared_node(
                "Squeeze",
                vec![m.no_media.clone(), squeeze_axes.clone()],
                vec![],
                m.place,
                &mut plan,
            );
            let o = format!("{}/mha_out", c.name);
            plan.insert.push((
                m.place,
                mha(
                    format!("{}/MultiHeadAttention", c.name),
                    vec![m.q, m.k, m.v, String::new(), String::new(), bias],
                    vec![o.clone()],
                    m.heads,
                    m.scale,
                ),
            ));
            plan.insert.push((
                m.place,
                node(
                    format!("{}/zero_without_media", c.name),
                    "Where",
                    "",
                    vec![no_media, m.zero, o],
                    vec![m.out],
                ),
            ));
            fused.cross_attention += 1;
        }
    }
    // ---- GELU and Add + LayerNorm, on what attention left
    for (i, n) in g.nodes.iter().enumerate() {
        if removed[i] {
            continue;
        }
        if n.op_type == "Erf" && n.domain.is_empty() {
            if let Some((x, nodes, out)) = match_gelu(&ix, i) {
                if claim(&mut removed, &nodes) {
                    let at = *nodes.iter().max().unwrap_or(&i);
                    let gn = format!("{}/Gelu", n.name);
                    plan.insert
                        .push((at, node(gn, "Gelu", "com.microsoft", vec![x], vec![out])));
                    fused.gelu += 1;
                }
            }
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if removed[i]
            || n.op_type != "LayerNormalization"
            || !n.domain.is_empty()
            || n.inputs.len() < 2
        {
            continue;
        }
        let Some(a) = ix.prod(&n.inputs[0], "Add") else {
            continue;
        };
        let add = ix.node(a);
        let runtime =
            |v: &str| (!ix.inits.contains_key(v) && ix.producer.contains_key(v)) || ix.is_input(v);
        let params_const = n.inputs[1..]
            .iter()
            .all(|v| v.is_empty() || ix.inits.contains_key(v.as_str()));
        let last_axis = n
            .attrs
            .iter()
            .all(|(k, a)| k != "axis" || matches!(a, Attr::Int(-1)));
        if removed[a] || !add.inputs.iter().all(|v| runtime(v)) || !params_const || !last_axis {
            continue;
        }
        let eps = n.attrs.iter().find_map(|(k, a)| match a {
            Attr::Float(e) if k == "epsilon" => Some(*e),
            _ => None,
        });
        let sum = &add.outputs[0];
        let mut outputs = vec![n.outputs[0].clone()];
        if ix.readers(sum) > 1 {
            outputs.extend([String::new(), String::new(), sum.clone()]);
        }
        let mut inputs = vec![
            add.inputs[0].clone(),
            add.inputs[1].clone(),
            n.inputs[1].clone(),
        ];
        if let Some(b) = n.inputs.get(2) {
            inputs.push(b.clone());
        }
        let mut s = node(
            n.name.clone(),
            "SkipLayerNormalization",
            "com.microsoft",
            inputs,
            outputs,
        );
        s.attrs = vec![("epsilon".into(), Attr::Float(eps.unwrap_or(1e-5)))];
        // at the Add's place: its inputs are ready there, and so is the sum
        plan.insert.push((a, s));
        claim(&mut removed, &[a, i]);
        fused.skip_layer_norm += 1;
    }
    if fused.total() == 0 {
        return (g.clone(), fused);
    }
    extra_inits.push((zero, Tensor::from_f32(vec![], &[0.0])));
    extra_inits.push((squeeze_axes, Tensor::from_i64(vec![1], &[1])));
    extra_inits.push((index_0, Tensor::from_i64(vec![1], &[0])));
    extra_inits.push((index_1, Tensor::from_i64(vec![], &[1])));
    extra_inits.push((one64, Tensor::from_i64(vec![], &[1])));
    let mut at: HashMap<usize, Vec<Node>> = HashMap::new();
    for (i, n) in plan.insert {
        at.entry(i).or_default().push(n);
    }
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(new) = at.remove(&i) {
            nodes.extend(new);
        }
        if !removed[i] {
            nodes.push(n.clone());
        }
    }
    let mut initializers = g.initializers.clone();
    initializers.extend(extra_inits);
    (with_body(g, nodes, initializers), fused)
}

struct SelfAttn {
    nodes: Vec<usize>,
    place: usize,
    /// The `[B, S, 3·D]` projection q, k and v are split from, when they
    /// are, and the `Split`.
    packed: Option<(String, usize)>,
    q: String,
    k: String,
    v: String,
    past_k: String,
    past_v: String,
    present_k: String,
    present_v: String,
    out: String,
    allowed: String,
    alibi: Option<String>,
    fill: String,
    heads: i64,
    scale: f64,
}

fn match_self_attention(ix: &Index, ck: usize) -> Option<SelfAttn> {
    let c = ix.node(ck);
    let axis2 = c
        .attrs
        .iter()
        .any(|(k, a)| k == "axis" && matches!(a, Attr::Int(2)));
    axis2.then_some(())?;
    let (k, hk, [tk, rk]) = ix.split_heads(&c.inputs[1])?;
    let present_k = c.outputs[0].as_str();
    // present_k: a graph output read by the kᵀ transpose alone
    let kt = ix.consumers.get(present_k)?;
    let [kt] = kt.as_slice() else { return None };
    (ix.node(*kt).op_type == "Transpose" && ix.perm(*kt)? == [0, 1, 3, 2]).then_some(())?;
    let qk = ix.only_cons(&ix.node(*kt).outputs[0], "MatMul")?;
    (ix.node(qk).inputs[1] == ix.node(*kt).outputs[0]).then_some(())?;
    let (q, hq, [tq, rq]) = ix.split_heads(&ix.node(qk).inputs[0])?;
    (hq == hk).then_some(())?;
    let mul = ix.only_cons(&ix.node(qk).outputs[0], "Mul")?;
    let scale = ix.scalar(&ix.node(mul).inputs[1])?;
    let mut cur = ix.node(mul).outputs[0].as_str();
    let mut nodes = vec![ck, tk, rk, *kt, qk, tq, rq, mul];
    let mut alibi = None;
    if let Some(a) = ix.only_cons(cur, "Add") {
        let an = ix.node(a);
        (an.inputs[0] == cur).then_some(())?;
        alibi = Some(an.inputs[1].clone());
        nodes.push(a);
        cur = an.outputs[0].as_str();
    }
    let w = ix.only_cons(cur, "Where")?;
    let wn = ix.node(w);
    (wn.inputs[1] == cur).then_some(())?;
    let sm = ix.only_cons(&wn.outputs[0], "Softmax")?;
    let pv = ix.only_cons(&ix.node(sm).outputs[0], "MatMul")?;
    let present_v = ix.node(pv).inputs[1].as_str();
    let cv = ix.prod(present_v, "Concat")?;
    let cvn = ix.node(cv);
    let (v, hv, [tv, rv]) = ix.split_heads(&cvn.inputs[1])?;
    (hv == hk && cvn.inputs.len() == 2).then_some(())?;
    // present_v: read by this product alone (besides being an output)
    (ix.consumers.get(present_v).map_or(0, |c| c.len()) == 1).then_some(())?;
    let (out, [to, ro]) = ix.merge_heads(&ix.node(pv).outputs[0])?;
    nodes.extend([w, sm, pv, cv, tv, rv, to, ro]);
    // the q, k, v heads' reshapes/transposes are read by this attention alone
    for &(i, _) in &[(tk, 0), (rk, 0), (tq, 0), (rq, 0), (tv, 0), (rv, 0)] {
        (ix.readers(&ix.node(i).outputs[0]) == 1).then_some(())?;
    }
    // q, k, v as the three equal parts of one projection along the hidden
    // axis: GroupQueryAttention reads that projection packed
    let packed = (|| {
        let sp = ix.prod(q, "Split")?;
        let n = ix.node(sp);
        (n.outputs.len() == 3 && n.outputs[0] == q && n.outputs[1] == k && n.outputs[2] == v)
            .then_some(())?;
        let axis = n.attrs.iter().find_map(|(a, v)| match v {
            Attr::Int(x) if a == "axis" => Some(*x),
            _ => None,
        });
        matches!(axis, Some(-1) | Some(2)).then_some(())?;
        if let Some(sizes) = n.inputs.get(1).filter(|s| !s.is_empty()) {
            let s = ix.consts(sizes)?;
            (s.len() == 3 && s[0] == s[1] && s[1] == s[2]).then_some(())?;
        }
        n.outputs
            .iter()
            .all(|o| ix.readers(o) == 1)
            .then(|| (n.inputs[0].clone(), sp))
    })();
    let place = *nodes.iter().max()?;
    Some(SelfAttn {
        place,
        packed,
        q: q.into(),
        k: k.into(),
        v: v.into(),
        past_k: c.inputs[0].clone(),
        past_v: cvn.inputs[0].clone(),
        present_k: present_k.into(),
        present_v: present_v.into(),
        out: out.into(),
        allowed: wn.inputs[0].clone(),
        alibi,
        fill: wn.inputs[2].clone(),
        heads: hq,
        scale,
        nodes,
    })
}

struct CrossAttn {
    nodes: Vec<usize>,
    place: usize,
    q: String,
    k: String,
    v: String,
    out: String,
    xmask: String,
    no_media: String,
    zero: String,
    fill: String,
    heads: i64,
    scale: f64,
}

fn match_cross_attention(ix: &Index, kt: usize) -> Option<CrossAttn> {
    let k = ix.node(kt).inputs[0].as_str();
    let sim = ix.only_cons(&ix.node(kt).outputs[0], "MatMul")?;
    (ix.node(sim).inputs[1] == ix.node(kt).outputs[0]).then_some(())?;
    let mq = ix.prod(&ix.node(sim).inputs[0], "Mul")?;
    (ix.readers(&ix.node(mq).outputs[0]) == 1).then_some(())?;
    let scale = ix.scalar(&ix.node(mq).inputs[1])?;
    let (q, heads, [tq, rq]) = ix.split_heads(&ix.node(mq).inputs[0])?;
    let w1 = ix.only_cons(&ix.node(sim).outputs[0], "Where")?;
    let w1n = ix.node(w1);
    (w1n.inputs[1] == ix.node(sim).outputs[0]).then_some(())?;
    let sm = ix.only_cons(&w1n.outputs[0], "Softmax")?;
    let w2 = ix.only_cons(&ix.node(sm).outputs[0], "Where")?;
    let w2n = ix.node(w2);
    (w2n.inputs[2] == ix.node(sm).outputs[0]).then_some(())?;
    (ix.scalar(&w2n.inputs[1])? == 0.0).then_some(())?;
    let pv = ix.only_cons(&w2n.outputs[0], "MatMul")?;
    let v = ix.node(pv).inputs[1].as_str();
    (ix.node(pv).inputs[0] == w2n.outputs[0] && ix.is_input(v)).then_some(())?;
    let (out, [to, ro]) = ix.merge_heads(&ix.node(pv).outputs[0])?;
    for i in [tq, rq] {
        (ix.readers(&ix.node(i).outputs[0]) == 1).then_some(())?;
    }
    let nodes = vec![kt, sim, mq, tq, rq, w1, sm, w2, pv, to, ro];
    let place = *nodes.iter().max()?;
    Some(CrossAttn {
        place,
        q: q.into(),
        k: k.into(),
        v: v.into(),
        out: out.into(),
        xmask: w1n.inputs[0].clone(),
        no_media: w2n.inputs[0].clone(),
        zero: w2n.inputs[1].clone(),
        fill: w1n.inputs[2].clone(),
        heads,
        scale,
        nodes,
    })
}

/// `Mul(Mul(x, 0.5), Add(Erf(Mul(x, 1/√2)), 1))` around the `Erf` at `e`:
/// (x, the five nodes, the output).
fn match_gelu(ix: &Index, e: usize) -> Option<(String, Vec<usize>, String)> {
    let close = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-6);
    let m1 = ix.prod(&ix.node(e).inputs[0], "Mul")?;
    let x = ix.node(m1).inputs[0].as_str();
    close(
        ix.scalar(&ix.node(m1).inputs[1]),
        std::f64::consts::FRAC_1_SQRT_2,
    )
    .then_some(())?;
    (ix.readers(&ix.node(m1).outputs[0]) == 1).then_some(())?;
    let a = ix.only_cons(&ix.node(e).outputs[0], "Add")?;
    close(ix.scalar(&ix.node(a).inputs[1]), 1.0).then_some(())?;
    let m3 = ix.only_cons(&ix.node(a).outputs[0], "Mul")?;
    let hx = ix
        .node(m3)
        .inputs
        .iter()
        .find(|v| **v != ix.node(a).outputs[0])?;
    let m2 = ix.prod(hx, "Mul")?;
    (ix.node(m2).inputs[0] == x && ix.readers(hx) == 1).then_some(())?;
    close(ix.scalar(&ix.node(m2).inputs[1]), 0.5).then_some(())?;
    Some((
        x.into(),
        vec![m1, e, a, m2, m3],
        ix.node(m3).outputs[0].clone(),
    ))
}
