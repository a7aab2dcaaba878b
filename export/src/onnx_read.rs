//! Reads an ONNX model (as this project writes them: opset 17, external data
//! beside it) back into the graph IR, so precision tools can rewrite an
//! existing export. Initializer bytes stay memory-mapped until written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use flamingo_graphs::{Attr, DType, Dim, Graph, IoSpec, Node, Tensor, TensorData, KEEP_FP32};

use crate::error::{corrupt, Result};
use crate::store::Mapped;

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let c = *self.b.get(self.pos)?;
            self.pos += 1;
            v |= ((c & 0x7f) as u64) << shift;
            if c & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// The next (field number, value), `None` at the end, `Err` if malformed.
    fn next(&mut self) -> Option<Result<(u32, Field<'a>), ()>> {
        if self.pos >= self.b.len() {
            return None;
        }
        let Some(key) = self.varint() else {
            return Some(Err(()));
        };
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let f = match wire {
            0 => self.varint().map(Field::Varint),
            1 => self.take(8).map(|_| Field::Fixed64),
            2 => self
                .varint()
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| self.take(n))
                .map(Field::Bytes),
            5 => self
                .take(4)
                .map(|s| Field::Fixed32(u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))),
            _ => None,
        };
        Some(f.map(|f| (field, f)).ok_or(()))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len())?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Some(s)
    }
}

fn fields(b: &[u8]) -> std::result::Result<Vec<(u32, Field<'_>)>, ()> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while let Some(f) = r.next() {
        out.push(f?);
    }
    Ok(out)
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Repeated int64: packed or not.
fn push_ints(out: &mut Vec<i64>, f: &Field) -> std::result::Result<(), ()> {
    match f {
        Field::Varint(v) => out.push(*v as i64),
        Field::Bytes(b) => {
            let mut r = Reader::new(b);
            while r.pos < b.len() {
                out.push(r.varint().ok_or(())? as i64);
            }
        }
        _ => return Err(()),
    }
    Ok(())
}

fn dtype_of(code: u64) -> Option<DType> {
    DType::from_onnx_code(code as i64)
}

type Bad = Box<dyn Fn(&str) -> crate::Error>;

fn tensor(
    b: &[u8],
    dir: &Path,
    maps: &mut HashMap<String, Arc<Mapped>>,
    bad: &Bad,
) -> Result<(String, Tensor)> {
    let mut dims = Vec::new();
    let (mut dtype, mut name, mut raw, mut ext) = (None, String::new(), None, Vec::new());
    let mut floats = Vec::new();
    let mut ints = Vec::new();
    for (k, f) in fields(b).map_err(|_| bad("malformed tensor"))? {
        match (k, &f) {
            (1, _) => push_ints(&mut dims, &f).map_err(|_| bad("malformed dims"))?,
            (2, Field::Varint(v)) => dtype = dtype_of(*v),
            (4, Field::Fixed32(v)) => floats.push(f32::from_bits(*v)),
            (4, Field::Bytes(p)) => floats.extend(
                p.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            (7, _) => push_ints(&mut ints, &f).map_err(|_| bad("malformed int64_data"))?,
            (8, Field::Bytes(v)) => name = s(v),
            (9, Field::Bytes(v)) => raw = Some(v.to_vec()),
            (13, Field::Bytes(v)) => {
                let (mut key, mut val) = (String::new(), String::new());
                for (kk, ff) in fields(v).map_err(|_| bad("malformed external_data"))? {
                    if let Field::Bytes(x) = ff {
                        if kk == 1 {
                            key = s(x);
                        } else if kk == 2 {
                            val = s(x);
                        }
                    }
                }
                ext.push((key, val));
            }
            _ => {}
        }
    }
    let dtype =
        dtype.ok_or_else(|| bad(&format!("tensor `{name}` has an unsupported data type")))?;
    let shape: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
    let numel: usize = shape.iter().product();
    let len = numel * dtype.size();
    let data = if !ext.is_empty() {
        let get = |k: &str| ext.iter().find(|e| e.0 == k).map(|e| e.1.clone());
        let loc = get("location")
            .ok_or_else(|| bad(&format!("`{name}`: external data without location")))?;
        if loc.contains("..") || Path::new(&loc).is_absolute() {
            return Err(bad(&format!(
                "`{name}`: external data must stay beside the model, got {loc}"
            )));
        }
        let offset: usize = get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let length: usize = get("length").and_then(|o| o.parse().ok()).unwrap_or(len);
        if length != len {
            return Err(bad(&format!(
                "`{name}`: external length {length} but {len} bytes expected"
            )));
        }
        let map = match maps.get(&loc) {
            Some(m) => m.clone(),
            None => {
                let m = Mapped::open(&dir.join(&loc))?;
                maps.insert(loc.clone(), m.clone());
                m
            }
        };
        if offset.checked_add(len).is_none_or(|e| e > map.map.len()) {
            return Err(bad(&format!("`{name}`: external data lies outside {loc}")));
        }
        let m = map.clone();
        TensorData::Lazy(Arc::new(move || Ok(m.map[offset..offset + len].to_vec())))
    } else if let Some(r) = raw {
        TensorData::Bytes(Arc::new(r))
    } else if !floats.is_empty() {
        TensorData::Bytes(Arc::new(
            floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
    } else {
        TensorData::Bytes(Arc::new(
            ints.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
    };
    Ok((name, Tensor { dtype, shape, data }))
}

fn value_info(b: &[u8], bad: &Bad) -> Result<IoSpec> {
    let mut name = String::new();
    let mut dtype = None;
    let mut dims = Vec::new();
    for (k, f) in fields(b).map_err(|_| bad("malformed value info"))? {
        match (k, f) {
            (1, Field::Bytes(v)) => name = s(v),
            (2, Field::Bytes(ty)) => {
                for (k2, f2) in fields(ty).map_err(|_| bad("malformed type"))? {
                    let (1, Field::Bytes(tt)) = (k2, f2) else {
                        continue;
                    };
                    for (k3, f3) in fields(tt).map_err(|_| bad("malformed tensor type"))? {
                        match (k3, f3) {
                            (1, Field::Varint(v)) => dtype = dtype_of(v),
                            (2, Field::Bytes(shape)) => {
                                for (_, d) in fields(shape).map_err(|_| bad("malformed shape"))? {
                                    let Field::Bytes(d) = d else { continue };
                                    for (k4, f4) in fields(d).map_err(|_| bad("malformed dim"))? {
                                        match (k4, f4) {
                                            (1, Field::Varint(v)) => {
                                                dims.push(Dim::Fixed(v as i64))
                                            }
                                            (2, Field::Bytes(p)) => dims.push(Dim::Sym(s(p))),
                                            _ => {}
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(IoSpec {
        dtype: dtype.ok_or_else(|| bad(&format!("`{name}` has an unsupported type")))?,
        name,
        dims,
    })
}

fn node(b: &[u8], dir: &Path, maps: &mut HashMap<String, Arc<Mapped>>, bad: &Bad) -> Result<Node> {
    let mut n = Node {
        name: String::new(),
        op_type: String::new(),
        domain: String::new(),
        inputs: vec![],
        outputs: vec![],
        attrs: vec![],
        keep_fp32: false,
    };
    for (k, f) in fields(b).map_err(|_| bad("malformed node"))? {
        match (k, f) {
            (1, Field::Bytes(v)) => n.inputs.push(s(v)),
            (2, Field::Bytes(v)) => n.outputs.push(s(v)),
            (3, Field::Bytes(v)) => n.name = s(v),
            (4, Field::Bytes(v)) => n.op_type = s(v),
            (6, Field::Bytes(v)) => n.keep_fp32 = v == KEEP_FP32.as_bytes(),
            (7, Field::Bytes(v)) => n.domain = s(v),
            (5, Field::Bytes(a)) => {
                let (mut name, mut ty) = (String::new(), 0);
                let (mut fv, mut iv, mut sv, mut tv) = (None, None, None, None);
                let (mut fs, mut is) = (Vec::new(), Vec::new());
                for (k2, f2) in fields(a).map_err(|_| bad("malformed attribute"))? {
                    match (k2, &f2) {
                        (1, Field::Bytes(x)) => name = s(x),
                        (2, Field::Fixed32(x)) => fv = Some(f32::from_bits(*x)),
                        (3, Field::Varint(x)) => iv = Some(*x as i64),
                        (4, Field::Bytes(x)) => sv = Some(s(x)),
                        (5, Field::Bytes(x)) => tv = Some(tensor(x, dir, maps, bad)?.1),
                        (7, Field::Fixed32(x)) => fs.push(f32::from_bits(*x)),
                        (7, Field::Bytes(x)) => fs.extend(
                            x.chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                        ),
                        (8, _) => push_ints(&mut is, &f2).map_err(|_| bad("malformed ints"))?,
                        (20, Field::Varint(x)) => ty = *x,
                        _ => {}
                    }
                }
                let attr = match ty {
                    1 => Attr::Float(fv.unwrap_or(0.0)),
                    2 => Attr::Int(iv.unwrap_or(0)),
                    3 => Attr::Str(sv.unwrap_or_default()),
                    4 => Attr::Tensor(tv.ok_or_else(|| bad("tensor attribute without a tensor"))?),
                    6 => Attr::Floats(fs),
                    7 => Attr::Ints(is),
                    _ => return Err(bad(&format!("attribute `{name}` of unsupported type {ty}"))),
                };
                n.attrs.push((name, attr));
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Reads `path` (and its external data) into a [`Graph`], plus the extra
/// operator sets it imports (domain, version) besides the default one.
pub fn read(path: &Path) -> Result<(Graph, Vec<(String, i64)>)> {
    let file = Mapped::open(path)?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let p = path.to_path_buf();
    let bad: Bad = Box::new(move |m: &str| corrupt(&p, format!("ONNX model: {m}")));
    let mut maps = HashMap::new();
    let mut graph = None;
    let mut opsets = Vec::new();
    for (k, f) in fields(&file.map).map_err(|_| bad("not a protobuf ModelProto"))? {
        match (k, f) {
            (7, Field::Bytes(g)) => graph = Some(g),
            (8, Field::Bytes(o)) => {
                let (mut d, mut v) = (String::new(), 0);
                for (k2, f2) in fields(o).map_err(|_| bad("malformed opset"))? {
                    match (k2, f2) {
                        (1, Field::Bytes(x)) => d = s(x),
                        (2, Field::Varint(x)) => v = x as i64,
                        _ => {}
                    }
                }
                if !d.is_empty() && d != "ai.onnx" {
                    opsets.push((d, v));
                }
            }
            _ => {}
        }
    }
    let g = graph.ok_or_else(|| bad("no graph"))?;
    let mut out = Graph {
        name: String::new(),
        doc: String::new(),
        inputs: vec![],
        outputs: vec![],
        nodes: vec![],
        initializers: vec![],
    };
    for (k, f) in fields(g).map_err(|_| bad("malformed graph"))? {
        match (k, f) {
            (1, Field::Bytes(n)) => out.nodes.push(node(n, &dir, &mut maps, &bad)?),
            (2, Field::Bytes(n)) => out.name = s(n),
            (5, Field::Bytes(t)) => out.initializers.push(tensor(t, &dir, &mut maps, &bad)?),
            (10, Field::Bytes(d)) => out.doc = s(d),
            (11, Field::Bytes(v)) => out.inputs.push(value_info(v, &bad)?),
            (12, Field::Bytes(v)) => out.outputs.push(value_info(v, &bad)?),
            _ => {}
        }
    }
    Ok((out, opsets))
}
