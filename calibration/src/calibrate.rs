//! `flamingo calibrate`: observe the fp32 graphs on real requests, then
//! write int8 QDQ graphs, TensorRT calibration caches, ONNX Runtime TensorRT
//! tables and a JSON report: all into one directory, atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use flamingo_export::{onnx_read, Error, Manifest, NoProgress, Progress, Result};
use flamingo_runtime::{BackendKind, Pipeline, Request, Value};
use serde::Serialize;

use crate::convert::convert_with;
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

/// Observes the activations of every graph of `model` over `requests`.
/// `tick` is called after each request.
pub fn observe(
    model: &Path,
    requests: &[Request],
    method: Method,
    backend: BackendKind,
    tick: &mut dyn FnMut(usize),
) -> Result<Ranges> {
    if requests.is_empty() {
        return Err(cfg_err(model, "no calibration requests".into()));
    }
    // an export with the observed activations as extra outputs (scratch)
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch =
        std::env::temp_dir().join(format!("flamingo-observe-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut watched: HashMap<String, HashSet<String>> = HashMap::new();
    let m = Manifest::load(model)?;
    for (role, info) in &m.graphs {
        let (g, _) = onnx_read::read(&model.join(&info.file))?;
        watched.insert(role.clone(), observed_tensors(&g).into_iter().collect());
    }
    let w = watched.clone();
    let result = (|| -> Result<Ranges> {
        convert_with(
            model,
            &scratch,
            true,
            &m.precision,
            &|role, g| {
                Ok(Some(with_observers(
                    g,
                    &w[role].iter().cloned().collect::<Vec<_>>(),
                )))
            },
            &|_| Ok(()),
            &mut NoProgress,
        )?;
        let stats: Arc<Mutex<HashMap<(String, String), Stats>>> = Arc::default();
        let mut p = Pipeline::load(&scratch, backend).map_err(|e| cfg_err(model, e.to_string()))?;
        let st = stats.clone();
        let w2 = watched.clone();
        p.model.set_observer(Some(Box::new(
            move |role: &str, outs: &HashMap<String, Value>| {
                let Ok(mut st) = st.lock() else { return };
                for name in w2.get(role).into_iter().flatten() {
                    if let Some(Value::F32(a)) = outs.get(&observed_output(name)) {
                        let v: Vec<f32> = a.iter().copied().collect();
                        st.entry((role.to_string(), name.clone()))
                            .or_default()
                            .observe(&v);
                    }
                }
            },
        )));
        for (i, r) in requests.iter().enumerate() {
            p.generate(r)
                .map_err(|e| cfg_err(model, format!("calibration request {}: {e}", i + 1)))?;
            tick(i + 1);
        }
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
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
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
        "int8-qdq",
        &|role, g| qdq::to_qdq(g, ranges.get(role).unwrap_or(&empty)).map(Some),
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
