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

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }
    fn load(&self, path: &Path) -> Result<Box<dyn Session>> {
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

impl Session for TractSession {
    fn run(&mut self, inputs: Vec<(&str, ValueRef<'_>)>) -> Result<HashMap<String, Value>> {
        let mut by_name: HashMap<&str, ValueRef<'_>> = inputs.into_iter().collect();
        let mut tv: TVec<TValue> = tvec![];
        for name in &self.inputs {
            let v = by_name
                .remove(name.as_str())
                .ok_or_else(|| Error::Input(format!("graph input `{name}` not given")))?;
            let t: Tensor = match v {
                ValueRef::F32(a) => a.to_owned().into(),
                ValueRef::I64(a) => a.to_owned().into(),
            };
            tv.push(t.into());
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
        let mut res = HashMap::new();
        for (name, v) in self.outputs.iter().zip(out) {
            let t = v.into_tensor();
            let val = match t.datum_type() {
                DatumType::F32 => Value::F32(t.into_plain_array::<f32>().map_err(err)?),
                DatumType::I64 => Value::I64(t.into_plain_array::<i64>().map_err(err)?),
                other => return Err(err(format!("unexpected output dtype {other:?}"))),
            };
            res.insert(name.clone(), val);
        }
        Ok(res)
    }
    fn provider(&self) -> String {
        "tract".into()
    }
}
