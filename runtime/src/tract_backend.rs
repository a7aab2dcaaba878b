//! tract: pure Rust, nothing to install. Graphs are optimised once at load
//! with their symbolic dimensions (batch, sequence) kept symbolic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::backend::{Backend, Session, Value, ValueRef};
use crate::{Error, Result};

pub struct TractBackend;

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "tract".into(),
        message: format!("{e:#}"),
    }
}

/// Matrix products over every core (once per process), as ONNX Runtime does.
fn use_all_cores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if n > 1 {
            if let Ok(pool) =
                std::panic::catch_unwind(|| tract_linalg::multithread::Executor::multithread(n))
            {
                tract_linalg::multithread::set_default_executor(pool);
            }
        }
    });
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }
    fn load(&self, path: &Path) -> Result<Box<dyn Session>> {
        use_all_cores();
        let ctx = |e: TractError| err(format!("loading {}: {e:#}", path.display()));
        let model = tract_onnx::onnx().model_for_path(path).map_err(ctx)?;
        let model = model.into_optimized().map_err(ctx)?;
        let inputs = model
            .input_outlets()
            .map_err(ctx)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let outputs = model
            .output_outlets()
            .map_err(ctx)?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let plan = model.into_runnable().map_err(ctx)?;
        Ok(Box::new(TractSession {
            plan,
            inputs,
            outputs,
        }))
    }
}

struct TractSession {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A tract value kept between runs (the KV cache, the media K/V): fed back
/// as it is, without converting to and from ndarray on every step.
struct TractResident {
    value: TValue,
    shape: Vec<usize>,
}

impl crate::backend::ResidentValue for TractResident {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn to_host(&self) -> Result<Value> {
        host(self.value.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn host(v: TValue) -> Result<Value> {
    let t = v.into_tensor();
    Ok(match t.datum_type() {
        DatumType::F32 => Value::F32(t.into_plain_array::<f32>().map_err(err)?),
        DatumType::I64 => Value::I64(t.into_plain_array::<i64>().map_err(err)?),
        other => return Err(err(format!("unexpected output dtype {other:?}"))),
    })
}

fn tensor(v: ValueRef<'_>) -> TValue {
    let t: Tensor = match v {
        ValueRef::F32(a) => a.to_owned().into(),
        ValueRef::I64(a) => a.to_owned().into(),
    };
    t.into()
}

impl TractSession {
    /// Runs the plan on inputs in graph order; outputs by name.
    fn exec(&self, mut by_name: HashMap<&str, TValue>) -> Result<Vec<(String, TValue)>> {
        let mut tv: TVec<TValue> = tvec![];
        for name in &self.inputs {
            tv.push(
                by_name
                    .remove(name.as_str())
                    .ok_or_else(|| Error::Input(format!("graph input `{name}` not given")))?,
            );
        }
        // tract asserts on some malformed graphs: report, don't abort
        let plan = self.plan.clone();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || plan.run(tv)))
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                err(format!("tract failed while running the graph ({msg}); re-export the model with this version"))
            })?
            .map_err(err)?;
        Ok(self.outputs.iter().cloned().zip(out).collect())
    }
}

impl Session for TractSession {
    fn run(&mut self, inputs: Vec<(&str, ValueRef<'_>)>) -> Result<HashMap<String, Value>> {
        let by_name = inputs.into_iter().map(|(n, v)| (n, tensor(v))).collect();
        self.exec(by_name)?
            .into_iter()
            .map(|(name, v)| Ok((name, host(v)?)))
            .collect()
    }
    fn provider(&self) -> String {
        "tract".into()
    }

    fn run_io(
        &mut self,
        inputs: Vec<(&str, crate::backend::Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<crate::backend::IoOutputs> {
        use crate::backend::{Input, Resident};
        let mut by_name = HashMap::new();
        for (name, i) in inputs {
            let v = match i {
                Input::Host(v) => tensor(v),
                Input::Resident(r) => match r.0.as_any().downcast_ref::<TractResident>() {
                    Some(t) => t.value.clone(),
                    None => tensor(
                        r.0.as_any()
                            .downcast_ref::<Value>()
                            .ok_or_else(|| {
                                Error::Input(format!("`{name}` is held by another backend"))
                            })?
                            .view(),
                    ),
                },
            };
            by_name.insert(name, v);
        }
        let (mut host_out, mut kept) = (HashMap::new(), HashMap::new());
        for (name, v) in self.exec(by_name)? {
            if keep(&name) {
                let shape = v.shape().to_vec();
                kept.insert(name, Resident(Arc::new(TractResident { value: v, shape })));
            } else {
                host_out.insert(name, host(v)?);
            }
        }
        Ok((host_out, kept))
    }

    fn upload(&self, v: ValueRef<'_>) -> Result<crate::backend::Resident> {
        Ok(crate::backend::Resident(Arc::new(TractResident {
            shape: v.shape().to_vec(),
            value: tensor(v),
        })))
    }

    fn binds_io(&self) -> bool {
        true
    }
}
