//! Writes a [`Graph`] as an ONNX `ModelProto` (IR version 8, opset 17) with
//! its initializers in an external-data file beside it, so that graphs above
//! protobuf's 2 GB limit work. Tensors of at least [`EXTERNAL_THRESHOLD`]
//! bytes go to the data file, each aligned to 4096 bytes (ONNX Runtime can
//! memory-map such offsets); smaller ones stay inline. The output is a pure
//! function of the graph: exporting twice gives identical bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto as pb;
use crate::ir::{Attr, Dim, Graph, IoSpec, Node};
use crate::tensor::Tensor;
use crate::{Error, Result};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;
pub const EXTERNAL_THRESHOLD: usize = 1024;
const ALIGN: u64 = 4096;

/// Extra operator sets a graph needs besides the default domain.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub extra_opsets: Vec<(String, i64)>,
    /// `metadata_props` of the model.
    pub metadata: Vec<(String, String)>,
}

/// The files a write produced (the `.onnx` and, if any, its data file).
#[derive(Clone, Debug)]
pub struct Written {
    pub model: PathBuf,
    pub data: Option<PathBuf>,
}

/// Where an initializer's bytes went: inline, or (file, offset, length).
enum Placed<'a> {
    Inline(&'a [u8]),
    External(&'a str, u64, u64),
}

/// Writes `graph` to `dir/file_name` (+ `dir/file_name.data`). `progress` is
/// called with the bytes of each initializer as it is written.
pub fn write(
    graph: &Graph,
    dir: &Path,
    file_name: &str,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let model_path = dir.join(file_name);
    let data_name = format!("{file_name}.data");
    let data_path = dir.join(&data_name);
    let io = |path: &Path| {
        let p = path.display().to_string();
        move |source| Error::Io { path: p, source }
    };
    let mut data: Option<(BufWriter<File>, u64)> = None;
    let mut inits = Vec::with_capacity(graph.initializers.len());
    for (name, t) in &graph.initializers {
        let bytes = t.bytes().map_err(|message| Error::Load {
            name: name.clone(),
            message,
        })?;
        if bytes.len() >= EXTERNAL_THRESHOLD {
            if data.is_none() {
                let f = File::create(&data_path).map_err(io(&data_path))?;
                data = Some((BufWriter::with_capacity(1 << 20, f), 0));
            }
            let Some((w, pos)) = data.as_mut() else {
                return Err(Error::Graph {
                    graph: graph.name.clone(),
                    message: "external data file not open".into(),
                });
            };
            let pad = (ALIGN - *pos % ALIGN) % ALIGN;
            w.write_all(&vec![0u8; pad as usize])
                .map_err(io(&data_path))?;
            let offset = *pos + pad;
            w.write_all(&bytes).map_err(io(&data_path))?;
            *pos = offset + bytes.len() as u64;
            inits.push(tensor_proto(
                name,
                t,
                Placed::External(&data_name, offset, bytes.len() as u64),
            ));
        } else {
            inits.push(tensor_proto(name, t, Placed::Inline(&bytes)));
        }
        progress(bytes.len() as u64);
    }
    if let Some((mut w, _)) = data {
        w.flush().map_err(io(&data_path))?;
        w.into_inner()
            .map_err(|e| Error::Io {
                path: data_path.display().to_string(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io(&data_path))?;
    }
    let model = model_proto(graph, inits, opts).encode_to_vec();
    let mut f = File::create(&model_path).map_err(io(&model_path))?;
    f.write_all(&model).map_err(io(&model_path))?;
    f.sync_all().map_err(io(&model_path))?;
    let has_data = graph
        .initializers
        .iter()
        .any(|(_, t)| t.byte_len() >= EXTERNAL_THRESHOLD);
    Ok(Written {
        model: model_path,
        data: has_data.then_some(data_path),
    })
}

/// The whole model in memory with inline initializers (small graphs, tests).
pub fn to_bytes(graph: &Graph, opts: &WriteOptions) -> Result<Vec<u8>> {
    let mut inits = Vec::new();
    for (name, t) in &graph.initializers {
        let bytes = t.bytes().map_err(|message| Error::Load {
            name: name.clone(),
            message,
        })?;
        inits.push(tensor_proto(name, t, Placed::Inline(&bytes)));
    }
    Ok(model_proto(graph, inits, opts).encode_to_vec())
}

fn opset(domain: &str, version: i64) -> pb::OperatorSetIdProto {
    pb::OperatorSetIdProto {
        domain: Some(domain.to_string()),
        version: Some(version),
    }
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    }
}

fn model_proto(
    graph: &Graph,
    initializer: Vec<pb::TensorProto>,
    opts: &WriteOptions,
) -> pb::ModelProto {
    let g = pb::GraphProto {
        node: graph.nodes.iter().map(node_proto).collect(),
        name: Some(graph.name.clone()),
        initializer,
        doc_string: (!graph.doc.is_empty()).then(|| graph.doc.clone()),
        input: graph.inputs.iter().map(value_info).collect(),
        output: graph.outputs.iter().map(value_info).collect(),
        ..Default::default()
    };
    let mut opset_import = vec![opset("", OPSET)];
    opset_import.extend(opts.extra_opsets.iter().map(|(d, v)| opset(d, *v)));
    pb::ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("flamingo".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(g),
        opset_import,
        metadata_props: opts.metadata.iter().map(|(k, v)| entry(k, v)).collect(),
        ..Default::default()
    }
}

fn node_proto(n: &Node) -> pb::NodeProto {
    pb::NodeProto {
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        name: Some(n.name.clone()),
        op_type: Some(n.op_type.clone()),
        attribute: n.attrs.iter().map(|(k, a)| attr_proto(k, a)).collect(),
        doc_string: n.keep_fp32.then(|| crate::ir::KEEP_FP32.to_string()),
        domain: (!n.domain.is_empty()).then(|| n.domain.clone()),
        ..Default::default()
    }
}

fn attr_proto(name: &str, a: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut m = pb::AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let ty = match a {
        Attr::Float(f) => {
            m.f = Some(*f);
            T::Float
        }
        Attr::Int(i) => {
            m.i = Some(*i);
            T::Int
        }
        Attr::Str(s) => {
            m.s = Some(s.as_bytes().to_vec());
            T::String
        }
        Attr::Tensor(t) => {
            let bytes = t.bytes().unwrap_or_default();
            m.t = Some(tensor_proto("", t, Placed::Inline(&bytes)));
            T::Tensor
        }
        Attr::Floats(fs) => {
            m.floats = fs.clone();
            T::Floats
        }
        Attr::Ints(is) => {
            m.ints = is.clone();
            T::Ints
        }
    };
    m.r#type = Some(ty as i32);
    m
}

fn tensor_proto(name: &str, t: &Tensor, placed: Placed) -> pb::TensorProto {
    let mut m = pb::TensorProto {
        dims: t.shape.iter().map(|d| *d as i64).collect(),
        data_type: Some(t.dtype.onnx_code()),
        name: (!name.is_empty()).then(|| name.to_string()),
        ..Default::default()
    };
    match placed {
        Placed::Inline(raw) => m.raw_data = Some(raw.to_vec()),
        Placed::External(location, offset, length) => {
            m.external_data = vec![
                entry("location", location),
                entry("offset", &offset.to_string()),
                entry("length", &length.to_string()),
            ];
            m.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        }
    }
    m
}

fn value_info(io: &IoSpec) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
    let dim = io
        .dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => D::DimValue(*v),
                Dim::Sym(s) => D::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = pb::type_proto::Tensor {
        elem_type: Some(io.dtype.onnx_code()),
        // an empty dims list leaves the shape undeclared (observed activations)
        shape: (!io.dims.is_empty()).then_some(pb::TensorShapeProto { dim }),
    };
    pb::ValueInfoProto {
        name: Some(io.name.clone()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
