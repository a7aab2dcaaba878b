//! `flamingo calibrate`: observe the fp32 graphs on real requests, then
//! write int8 QDQ graphs, TensorRT calibration caches, ONNX Runtime TensorRT
//! tables and a JSON report: all into one directory, atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use flamingo_contract::{GraphRole, Manifest, Precision};
use flamingo_export::{Error, NoProgress, Progress, Result};
use flamingo_graphs::onnx;
use flamingo_runtime::{BackendKind, Pipeline, Request, Value};
use serde::Serialize;

use crate::convert::convert_with;
use crate::gptq::{Hessian, Hessians};
use crate::observe::{observed_output, observed_tensors, with_observers, Method, Range, Stats};
use crate::{qdq, tables};

/// Per graph role, per tensor: the calibrated range.
pub type Ranges = BTreeMap<String, BTreeMap<String, Range>>;

/// The JSON report (`calibration/report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub method: String,
    pub samples: usize,
    pub graphs: Ranges,
}

fn cfg_err(path: &Path, message: String) -> Error {
    Error::Config {
        path: path.display().to_string(),
        message,
    }
}

/// A consumer of observed activations: `(graph role, tensor name, value)`.
pub type Sink = Box<dyn FnMut(GraphRole, &str, &ndarray::ArrayD<f32>) + Send>;

/// Runs the fp32 graphs of `model` over `requests` (generation, as
/// `flamingo generate` would) with the tensors `select(role, graph)` names
/// exposed, handing each observed value to `sink`. `tick` is called after
/// each request. The instrumented copy of the export lives in a scratch
/// directory that is removed afterwards, whatever happens.
pub fn observe_with(
    model: &Path,
    requests: &[Request],
    backend: BackendKind,
    select: &dyn Fn(GraphRole, &flamingo_graphs::Graph) -> Vec<String>,
    sink: Sink,
    tick: &mut dyn FnMut(usize),
) -> Result<()> {
    if requests.is_empty() {
        return Err(cfg_err(model, "no calibration requests".into()));
    }
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch =
        std::env::temp_dir().join(format!("flamingo-observe-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    flamingo_export::output::track_partial(&scratch);
    let mut watched: HashMap<GraphRole, Vec<String>> = HashMap::new();
    let m = Manifest::load(model)?;
    for (role, info) in &m.graphs {
        let (g, _) = onnx::read(&model.join(&info.file))?;
        watched.insert(*role, select(*role, &g));
    }
    let w = watched.clone();
    let result = (|| -> Result<()> {
        convert_with(
            model,
            &scratch,
            true,
            m.precision,
            &|role, g| {
                let names = w.get(&role).cloned().unwrap_or_default();
                Ok((!names.is_empty()).then(|| with_observers(g, &names)))
            },
            &|_| Ok(()),
            &mut NoProgress,
        )?;
        let mut p = Pipeline::load(&scratch, backend).map_err(|e| cfg_err(model, e.to_string()))?;
        let sink = Arc::new(Mutex::new(sink));
        let s2 = sink.clone();
        p.model.set_observer(Some(Box::new(
            move |role: GraphRole, outs: &HashMap<String, Value>| {
                let Ok(mut sink) = s2.lock() else { return };
                for name in watched.get(&role).into_iter().flatten() {
                    if let Some(Value::F32(a)) = outs.get(&observed_output(name)) {
                        (*sink)(role, name, a);
                    }
                }
            },
        )));
        for (i, r) in requests.iter().enumerate() {
            p.generate(r)
                .map_err(|e| cfg_err(model, format!("calibration request {}: {e}", i + 1)))?;
            tick(i + 1);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    flamingo_export::output::untrack_partial(&scratch);
    result
}

/// Observes the activations static int8 quantises (every graph of `model`)
/// over `requests` and picks each tensor's range by `method`.
pub fn observe(
    model: &Path,
    requests: &[Request],
    method: Method,
    backend: BackendKind,
    tick: &mut dyn FnMut(usize),
) -> Result<Ranges> {
    let stats: Arc<Mutex<HashMap<(String, String), Stats>>> = Arc::default();
    let st = stats.clone();
    observe_with(
        model,
        requests,
        backend,
        &|_, g| observed_tensors(g),
        Box::new(move |role, name, a| {
            let Ok(mut st) = st.lock() else { return };
            let v: Vec<f32> = a.iter().copied().collect();
            st.entry((role.as_str().to_string(), name.to_string()))
                .or_default()
                .observe(&v);
        }),
        tick,
    )?;
    let st = stats
        .lock()
        .map_err(|_| cfg_err(model, "observer poisoned".into()))?;
    let mut ranges = Ranges::new();
    for ((role, name), s) in st.iter() {
        ranges.entry(role.clone()).or_default().insert(
            name.clone(),
            Range {
                min: s.min,
                max: s.max,
                threshold: s.threshold(method),
                count: s.count,
            },
        );
    }
    Ok(ranges)
}

/// The Hessians GPTQ needs (see [`crate::gptq`]): `XᵀX` of every activation
/// feeding a decoder MatMul with an initializer weight, over `requests`.
pub fn hessians(
    model: &Path,
    requests: &[Request],
    backend: BackendKind,
    tick: &mut dyn FnMut(usize),
) -> Result<Hessians> {
    let acc: Arc<Mutex<Hessians>> = Arc::default();
    let a2 = acc.clone();
    observe_with(
        model,
        requests,
        backend,
        &|role, g| {
            if role == GraphRole::Decoder {
                observed_tensors(g)
            } else {
                Vec::new()
            }
        },
        Box::new(move |_, name, x| {
            let Ok(mut acc) = a2.lock() else { return };
            let Some(&k) = x.shape().last() else { return };
            acc.entry(name.to_string())
                .or_insert_with(|| Hessian::new(k))
                .add(x);
        }),
        tick,
    )?;
    let mut acc = acc
        .lock()
        .map_err(|_| cfg_err(model, "observer poisoned".into()))?;
    Ok(std::mem::take(&mut *acc))
}

/// Writes the calibrated export: QDQ graphs (+ manifest, tokenizer) and
/// `calibration/` with `<graph>.trt.cache`, `<graph>.ort-trt.flatbuffers`,
/// `<graph>.ort-trt.cache` (text) and `report.json`.
pub fn write(
    model: &Path,
    out: &Path,
    force: bool,
    ranges: &Ranges,
    method: Method,
    samples: usize,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let empty = BTreeMap::new();
    let extra = |dir: &Path| -> Result<()> {
        let cal = dir.join("calibration");
        std::fs::create_dir_all(&cal).map_err(|e| io(&cal, e))?;
        for (role, r) in ranges {
            let files: [(String, Vec<u8>); 3] = [
                (
                    format!("{role}.trt.cache"),
                    tables::trt_cache(r, method).into_bytes(),
                ),
                (
                    format!("{role}.ort-trt.flatbuffers"),
                    tables::ort_trt_table(r),
                ),
                (
                    format!("{role}.ort-trt.cache"),
                    r.iter()
                        .map(|(k, v)| format!("{k} {}\n", tables::range_string(v)))
                        .collect::<String>()
                        .into_bytes(),
                ),
            ];
            for (name, bytes) in files {
                let p = cal.join(name);
                std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
            }
        }
        let report = Report {
            method: method.name(),
            samples,
            graphs: ranges.clone(),
        };
        let p = cal.join("report.json");
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
        .map_err(|e| io(&p, e))?;
        Ok(())
    };
    convert_with(
        model,
        out,
        force,
        Precision::Int8Qdq,
        &|role, g| qdq::to_qdq(g, ranges.get(role.as_str()).unwrap_or(&empty)).map(Some),
        &extra,
        progress,
    )
}

fn io(p: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        source,
    }
}
