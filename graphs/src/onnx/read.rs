//! Reads an ONNX model (as this project writes them: opset 17, external data
//! beside it) back into the graph IR, so precision tools can rewrite an
//! existing export. Initializer bytes stay memory-mapped until written.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use prost::Message;

use super::proto as pb;
use crate::ir::{Attr, Dim, Graph, IoSpec, Node, KEEP_FP32};
use crate::tensor::{DType, Tensor, TensorData};
use crate::{Error, Result};

/// Memory-maps `path` (read-only), refusing an empty file.
fn map(path: &Path) -> Result<Arc<Mmap>> {
    let read = |source| Error::Read {
        path: path.display().to_string(),
        source,
    };
    if !std::fs::metadata(path).map_err(read)?.is_file() {
        return Err(Error::Corrupt {
            path: path.display().to_string(),
            message: "not a regular file".into(),
        });
    }
    let f = File::open(path).map_err(read)?;
    if f.metadata().map_err(read)?.len() == 0 {
        return Err(Error::Corrupt {
            path: path.display().to_string(),
            message: "the file is empty".into(),
        });
    }
    // SAFETY: the map is read-only; like every mmap reader we assume the
    // file is not truncated by another process while we read it.
    let m = unsafe { Mmap::map(&f) }.map_err(read)?;
    Ok(Arc::new(m))
}

struct Reader<'a> {
    dir: &'a Path,
    path: &'a Path,
    maps: HashMap<String, Arc<Mmap>>,
}

impl Reader<'_> {
    fn bad(&self, m: &str) -> Error {
        Error::Corrupt {
            path: self.path.display().to_string(),
            message: format!("ONNX model: {m}"),
        }
    }

    fn tensor(&mut self, t: pb::TensorProto) -> Result<(String, Tensor)> {
        let name = t.name.clone().unwrap_or_default();
        let dtype = DType::from_onnx_code(t.data_type() as i64)
            .ok_or_else(|| self.bad(&format!("tensor `{name}` has an unsupported data type")))?;
        let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| self.bad(&format!("tensor `{name}`: shape {shape:?} overflows")))?;
        let len = numel;
        let data = if !t.external_data.is_empty() {
            let get = |k: &str| {
                t.external_data
                    .iter()
                    .find(|e| e.key() == k)
                    .map(|e| e.value().to_string())
            };
            let loc = get("location")
                .ok_or_else(|| self.bad(&format!("`{name}`: external data without location")))?;
            if loc.contains("..") || Path::new(&loc).is_absolute() {
                return Err(self.bad(&format!(
                    "`{name}`: external data must stay beside the model, got {loc}"
                )));
            }
            let offset: usize = get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
            let length: usize = get("length").and_then(|o| o.parse().ok()).unwrap_or(len);
            if length != len {
                return Err(self.bad(&format!(
                    "`{name}`: external length {length} but {len} bytes expected"
                )));
            }
            let m = match self.maps.get(&loc) {
                Some(m) => m.clone(),
                None => {
                    let m = map(&self.dir.join(&loc))?;
                    self.maps.insert(loc.clone(), m.clone());
                    m
                }
            };
            if offset.checked_add(len).is_none_or(|e| e > m.len()) {
                return Err(self.bad(&format!("`{name}`: external data lies outside {loc}")));
            }
            TensorData::Lazy(Arc::new(move || Ok(m[offset..offset + len].to_vec())))
        } else if let Some(r) = t.raw_data {
            TensorData::Bytes(Arc::new(r))
        } else if !t.float_data.is_empty() {
            TensorData::Bytes(Arc::new(
                t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        } else {
            TensorData::Bytes(Arc::new(
                t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        };
        Ok((name, Tensor { dtype, shape, data }))
    }

    fn value_info(&self, v: &pb::ValueInfoProto) -> Result<IoSpec> {
        let name = v.name().to_string();
        let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        };
        let dtype = tensor
            .and_then(|t| DType::from_onnx_code(t.elem_type() as i64))
            .ok_or_else(|| self.bad(&format!("`{name}` has an unsupported type")))?;
        use pb::tensor_shape_proto::dimension::Value as D;
        let dims = tensor
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .filter_map(|d| match &d.value {
                        Some(D::DimValue(v)) => Some(Dim::Fixed(*v)),
                        Some(D::DimParam(p)) => Some(Dim::Sym(p.clone())),
                        None => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(IoSpec { name, dtype, dims })
    }

    fn node(&mut self, n: pb::NodeProto) -> Result<Node> {
        use pb::attribute_proto::AttributeType as T;
        let keep_fp32 = n.doc_string() == KEEP_FP32;
        let mut attrs = Vec::with_capacity(n.attribute.len());
        for a in n.attribute {
            let name = a.name().to_string();
            let ty = a.r#type();
            let attr = match ty {
                T::Float => Attr::Float(a.f()),
                T::Int => Attr::Int(a.i()),
                T::String => Attr::Str(String::from_utf8_lossy(a.s()).into_owned()),
                T::Tensor => match a.t {
                    Some(t) => Attr::Tensor(self.tensor(t)?.1),
                    None => return Err(self.bad("tensor attribute without a tensor")),
                },
                T::Floats => Attr::Floats(a.floats),
                T::Ints => Attr::Ints(a.ints),
                other => {
                    return Err(self.bad(&format!(
                        "attribute `{name}` of unsupported type {}",
                        other as i32
                    )))
                }
            };
            attrs.push((name, attr));
        }
        Ok(Node {
            keep_fp32,
            name: n.name.unwrap_or_default(),
            op_type: n.op_type.unwrap_or_default(),
            domain: n.domain.unwrap_or_default(),
            inputs: n.input,
            outputs: n.output,
            attrs,
        })
    }
}

/// Reads `path` (and its external data) into a [`Graph`], plus the extra
/// operator sets it imports (domain, version) besides the default one.
pub fn read(path: &Path) -> Result<(Graph, Vec<(String, i64)>)> {
    let file = map(path)?;
    read_bytes(&file, path)
}

/// [`read`] of the model's bytes (its external data beside `path`).
pub fn read_bytes(bytes: &[u8], path: &Path) -> Result<(Graph, Vec<(String, i64)>)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut r = Reader {
        dir,
        path,
        maps: HashMap::new(),
    };
    let model = pb::ModelProto::decode(bytes)
        .map_err(|e| r.bad(&format!("not a protobuf ModelProto ({e})")))?;
    let opsets = model
        .opset_import
        .iter()
        .filter(|o| !o.domain().is_empty() && o.domain() != "ai.onnx")
        .map(|o| (o.domain().to_string(), o.version()))
        .collect();
    let g = model.graph.ok_or_else(|| r.bad("no graph"))?;
    let mut out = Graph {
        name: g.name.clone().unwrap_or_default(),
        doc: g.doc_string.clone().unwrap_or_default(),
        inputs: Vec::with_capacity(g.input.len()),
        outputs: Vec::with_capacity(g.output.len()),
        nodes: Vec::with_capacity(g.node.len()),
        initializers: Vec::with_capacity(g.initializer.len()),
    };
    for v in &g.input {
        out.inputs.push(r.value_info(v)?);
    }
    for v in &g.output {
        out.outputs.push(r.value_info(v)?);
    }
    for n in g.node {
        out.nodes.push(r.node(n)?);
    }
    for t in g.initializer {
        out.initializers.push(r.tensor(t)?);
    }
    Ok((out, opsets))
}
