//! Writes a [`Graph`] as an ONNX `ModelProto` (IR version 8, opset 17) with
//! its initializers in an external-data file beside it, so that graphs above
//! protobuf's 2 GB limit work. Tensors of at least [`EXTERNAL_THRESHOLD`]
//! bytes go to the data file, each aligned to 4096 bytes (ONNX Runtime can
//! memory-map such offsets); smaller ones stay inline. The output is a pure
//! function of the graph: exporting twice gives identical bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::ir::{Attr, Dim, Graph, IoSpec, Node};
use crate::proto::Msg;
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
                None,
                Some((&data_name, offset, bytes.len() as u64)),
            ));
        } else {
            inits.push(tensor_proto(name, t, Some(&bytes), None));
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
    let model = model_proto(graph, inits, opts);
    let mut f = File::create(&model_path).map_err(io(&model_path))?;
    f.write_all(&model.buf).map_err(io(&model_path))?;
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
        inits.push(tensor_proto(name, t, Some(&bytes), None));
    }
    Ok(model_proto(graph, inits, opts).buf)
}

fn model_proto(graph: &Graph, inits: Vec<Msg>, opts: &WriteOptions) -> Msg {
    let mut g = Msg::default();
    for n in &graph.nodes {
        g.msg(1, node_proto(n));
    }
    g.str(2, &graph.name);
    for i in inits {
        g.msg(5, i);
    }
    if !graph.doc.is_empty() {
        g.str(10, &graph.doc);
    }
    for i in &graph.inputs {
        g.msg(11, value_info(i));
    }
    for o in &graph.outputs {
        g.msg(12, value_info(o));
    }
    let mut m = Msg::default();
    m.int(1, IR_VERSION);
    m.str(2, "flamingo");
    m.str(3, env!("CARGO_PKG_VERSION"));
    m.msg(7, g);
    let mut opset = Msg::default();
    opset.str(1, "");
    opset.int(2, OPSET);
    m.msg(8, opset);
    for (domain, version) in &opts.extra_opsets {
        let mut o = Msg::default();
        o.str(1, domain);
        o.int(2, *version);
        m.msg(8, o);
    }
    for (k, v) in &opts.metadata {
        let mut e = Msg::default();
        e.str(1, k);
        e.str(2, v);
        m.msg(14, e);
    }
    m
}

fn node_proto(n: &Node) -> Msg {
    let mut m = Msg::default();
    for i in &n.inputs {
        m.str(1, i);
    }
    for o in &n.outputs {
        m.str(2, o);
    }
    m.str(3, &n.name);
    m.str(4, &n.op_type);
    for (k, a) in &n.attrs {
        m.msg(5, attr_proto(k, a));
    }
    if n.keep_fp32 {
        m.str(6, crate::ir::KEEP_FP32);
    }
    if !n.domain.is_empty() {
        m.str(7, &n.domain);
    }
    m
}

fn attr_proto(name: &str, a: &Attr) -> Msg {
    let mut m = Msg::default();
    m.str(1, name);
    match a {
        Attr::Float(f) => {
            m.float(2, *f);
            m.int(20, 1);
        }
        Attr::Int(i) => {
            m.int(3, *i);
            m.int(20, 2);
        }
        Attr::Str(s) => {
            m.str(4, s);
            m.int(20, 3);
        }
        Attr::Tensor(t) => {
            let bytes = t.bytes().unwrap_or_default();
            m.msg(5, tensor_proto("", t, Some(&bytes), None));
            m.int(20, 4);
        }
        Attr::Floats(fs) => {
            for f in fs {
                m.float(7, *f);
            }
            m.int(20, 6);
        }
        Attr::Ints(is) => {
            for i in is {
                m.int(8, *i);
            }
            m.int(20, 7);
        }
    }
    m
}

fn tensor_proto(
    name: &str,
    t: &Tensor,
    raw: Option<&[u8]>,
    external: Option<(&str, u64, u64)>,
) -> Msg {
    let mut m = Msg::default();
    for d in &t.shape {
        m.int(1, *d as i64);
    }
    m.int(2, t.dtype.onnx_code() as i64);
    if !name.is_empty() {
        m.str(8, name);
    }
    if let Some(raw) = raw {
        m.bytes(9, raw);
    }
    if let Some((location, offset, length)) = external {
        for (k, v) in [
            ("location", location.to_string()),
            ("offset", offset.to_string()),
            ("length", length.to_string()),
        ] {
            let mut e = Msg::default();
            e.str(1, k);
            e.str(2, &v);
            m.msg(13, e);
        }
        m.int(14, 1);
    }
    m
}

fn value_info(io: &IoSpec) -> Msg {
    let mut shape = Msg::default();
    for d in &io.dims {
        let mut dim = Msg::default();
        match d {
            Dim::Fixed(v) => dim.int(1, *v),
            Dim::Sym(s) => dim.str(2, s),
        }
        shape.msg(1, dim);
    }
    let mut tt = Msg::default();
    tt.int(1, io.dtype.onnx_code() as i64);
    // an empty dims list leaves the shape undeclared (observed activations)
    if !io.dims.is_empty() {
        tt.msg(2, shape);
    }
    let mut ty = Msg::default();
    ty.msg(1, tt);
    let mut m = Msg::default();
    m.str(1, &io.name);
    m.msg(2, ty);
    m
}
