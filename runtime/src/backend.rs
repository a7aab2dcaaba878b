//! The backend abstraction: one [`Session`] per graph, run by tensor name.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::ArrayD;

use crate::{Error, Result};

/// A tensor passed to or returned by a graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl Value {
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F32(a) => a.shape(),
            Value::I64(a) => a.shape(),
        }
    }
    pub fn into_f32(self, what: &str) -> Result<ArrayD<f32>> {
        match self {
            Value::F32(a) => Ok(a),
            Value::I64(_) => Err(Error::Input(format!("`{what}` is int64, float32 expected"))),
        }
    }
}

/// A borrowed input: backends that can read the caller's memory (ONNX
/// Runtime) do so without a copy.
#[derive(Clone, Debug)]
pub enum ValueRef<'a> {
    F32(ndarray::ArrayViewD<'a, f32>),
    I64(ndarray::ArrayViewD<'a, i64>),
}

impl ValueRef<'_> {
    pub fn shape(&self) -> &[usize] {
        match self {
            ValueRef::F32(a) => a.shape(),
            ValueRef::I64(a) => a.shape(),
        }
    }
}

impl Value {
    pub fn view(&self) -> ValueRef<'_> {
        match self {
            Value::F32(a) => ValueRef::F32(a.view()),
            Value::I64(a) => ValueRef::I64(a.view()),
        }
    }
}

/// Loads graphs into sessions.
/// A value a backend keeps between runs: for ONNX Runtime an `OrtValue` (in
/// device memory under the CUDA and TensorRT providers), so that the KV
/// cache and the media K/V need no host round trip per decode step.
pub trait ResidentValue: Send + Sync + std::any::Any {
    fn shape(&self) -> &[usize];
    /// A host copy.
    fn to_host(&self) -> Result<Value>;
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A shared handle to a [`ResidentValue`] (cloning shares it). Runs never
/// write their inputs, but for [`Session::run_io_into`]'s in-place outputs,
/// which the KV cache only asks for on buffers it holds alone.
#[derive(Clone)]
pub struct Resident(pub std::sync::Arc<dyn ResidentValue>);

impl Resident {
    pub fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    pub fn to_host(&self) -> Result<Value> {
        self.0.to_host()
    }
}

impl fmt::Debug for Resident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resident{:?}", self.shape())
    }
}

/// A host value standing in for a resident one (backends without device
/// memory of their own).
impl ResidentValue for Value {
    fn shape(&self) -> &[usize] {
        Value::shape(self)
    }
    fn to_host(&self) -> Result<Value> {
        Ok(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A graph input: borrowed host data, or a value the backend already holds.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    Host(ValueRef<'a>),
    Resident(&'a Resident),
}

/// Host outputs and resident outputs of one run.
pub type IoOutputs = (HashMap<String, Value>, HashMap<String, Resident>);

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Loads the `.onnx` at `path` (external data beside it).
    fn load(&self, path: &Path) -> Result<Box<dyn Session>>;
    /// Loads like [`Backend::load`], through the optimised-graph cache of
    /// `key` where this backend keeps one (ONNX Runtime CPU); says how.
    fn load_cached(
        &self,
        path: &Path,
        key: Option<&GraphKey>,
    ) -> Result<(Box<dyn Session>, CacheUse)> {
        let _ = key;
        Ok((self.load(path)?, CacheUse::Off))
    }
}

/// What an optimised graph is cached by: the verified sha256s of the graph
/// and of its external data (the backend adds its own version and the
/// CPU's features), and where the export's cache lives.
#[derive(Clone, Debug)]
pub struct GraphKey {
    /// The export's cache directory (`DIR/.flamingo-cache`).
    pub dir: PathBuf,
    pub role: flamingo_contract::GraphRole,
    pub sha256: String,
    pub data_sha256: Option<String>,
}

/// How a session was made, as far as the optimised-graph cache goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// No cache: the backend keeps none, the files were not verified, or
    /// it is switched off.
    Off,
    /// Loaded from the cache.
    Hit,
    /// Optimised from the graph and saved to the cache for the next load.
    Built,
    /// Optimised from the graph; the cache could not be written (why).
    Unwritable(String),
}

impl std::fmt::Display for CacheUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheUse::Off => f.write_str("off"),
            CacheUse::Hit => f.write_str("hit"),
            CacheUse::Built => f.write_str("built"),
            CacheUse::Unwritable(why) => write!(f, "not written: {why}"),
        }
    }
}

/// A loaded graph.
pub trait Session: Send {
    /// Runs the graph; `inputs` by name, every graph input given. Returns the outputs by name.
    fn run(&mut self, inputs: Vec<(&str, ValueRef<'_>)>) -> Result<HashMap<String, Value>>;
    /// Which engine/provider runs this graph (`tract`, `ort:CPUExecutionProvider`).
    fn provider(&self) -> String;

    /// Runs with inputs that may be resident; the outputs `keep` selects stay
    /// with the backend (I/O binding), the others come back to the host.
    /// The default (host memory only) wraps host values.
    fn run_io(
        &mut self,
        inputs: Vec<(&str, Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<IoOutputs> {
        let mut host = Vec::with_capacity(inputs.len());
        for (name, i) in inputs {
            host.push((
                name,
                match i {
                    Input::Host(v) => v,
                    Input::Resident(r) => {
                        r.0.as_any()
                            .downcast_ref::<Value>()
                            .ok_or_else(|| {
                                Error::Input(format!("`{name}` is held by another backend"))
                            })?
                            .view()
                    }
                },
            ));
        }
        let out = self.run(host)?;
        let mut resident = HashMap::new();
        let mut rest = HashMap::new();
        for (name, v) in out {
            if keep(&name) {
                resident.insert(name, Resident(std::sync::Arc::new(v)));
            } else {
                rest.insert(name, v);
            }
        }
        Ok((rest, resident))
    }

    /// [`Self::run_io`] with the outputs named in `into` written into those
    /// resident values in place (bound as the outputs; not returned): a KV
    /// buffer read as the past and written as the present. Only where
    /// [`Self::updates_in_place`].
    fn run_io_into(
        &mut self,
        inputs: Vec<(&str, Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
        into: &[(&str, &Resident)],
    ) -> Result<IoOutputs> {
        let _ = (inputs, keep, into);
        Err(Error::Input(format!(
            "{} cannot write outputs in place",
            self.provider()
        )))
    }

    /// A resident copy of `v` that [`Self::run_io_into`] may write.
    fn buffer(&self, v: &Value) -> Result<Resident> {
        self.upload(v.view())
    }

    /// Whether [`Self::run_io_into`] works.
    fn updates_in_place(&self) -> bool {
        false
    }

    /// Hands a host value to the backend once (e.g. the media K/V, read by
    /// every decode step): one copy.
    fn upload(&self, v: ValueRef<'_>) -> Result<Resident> {
        let owned = match v {
            ValueRef::F32(a) => Value::F32(a.to_owned()),
            ValueRef::I64(a) => Value::I64(a.to_owned()),
        };
        Ok(Resident(std::sync::Arc::new(owned)))
    }

    /// Whether [`Self::run_io`] keeps values in the backend's own memory
    /// (worth using instead of [`Self::run`]).
    fn binds_io(&self) -> bool {
        false
    }
}

/// The backends a user can ask for by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// tract: pure Rust, embedded, the default.
    #[default]
    Tract,
    /// ONNX Runtime on the CPU.
    OrtCpu,
    OrtCuda,
    OrtTensorRt,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Tract,
        BackendKind::OrtCpu,
        BackendKind::OrtCuda,
        BackendKind::OrtTensorRt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::OrtCpu => "ort-cpu",
            BackendKind::OrtCuda => "ort-cuda",
            BackendKind::OrtTensorRt => "ort-tensorrt",
        }
    }

    /// Instantiates the backend (ONNX Runtime's library is loaded here).
    pub fn create(self) -> Result<Box<dyn Backend>> {
        self.create_for(None, &crate::gpu::GpuOptions::default())
    }

    /// Instantiates the backend for a model (GPU providers take their
    /// optimisation profiles from its manifest).
    pub fn create_for(
        self,
        manifest: Option<&flamingo_contract::Manifest>,
        gpu: &crate::gpu::GpuOptions,
    ) -> Result<Box<dyn Backend>> {
        let _ = (manifest, gpu);
        match self {
            BackendKind::Tract => Ok(Box::new(crate::tract_backend::TractBackend)),
            #[cfg(feature = "ort")]
            BackendKind::OrtCpu => Ok(Box::new(crate::ort_backend::OrtBackend::cpu()?)),
            #[cfg(not(feature = "ort"))]
            BackendKind::OrtCpu => Err(Error::BackendDisabled("ort-cpu".into(), "ort")),
            #[cfg(feature = "cuda")]
            BackendKind::OrtCuda => Ok(Box::new(crate::ort_backend::OrtBackend::with(
                crate::ort_backend::Providers::Cuda(gpu.clone()),
                "ort-cuda",
            )?)),
            #[cfg(not(feature = "cuda"))]
            BackendKind::OrtCuda => Err(Error::BackendDisabled("ort-cuda".into(), "cuda")),
            #[cfg(feature = "tensorrt")]
            BackendKind::OrtTensorRt => {
                let m = manifest.ok_or_else(|| {
                    Error::Input("ort-tensorrt needs the model's manifest".into())
                })?;
                Ok(Box::new(crate::ort_backend::OrtBackend::with(
                    crate::ort_backend::Providers::TensorRt(gpu.clone(), Box::new(m.clone())),
                    "ort-tensorrt",
                )?))
            }
            #[cfg(not(feature = "tensorrt"))]
            BackendKind::OrtTensorRt => {
                Err(Error::BackendDisabled("ort-tensorrt".into(), "tensorrt"))
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<BackendKind> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::UnknownBackend(s.to_string()))
    }
}
