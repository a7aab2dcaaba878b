//! ONNX Runtime through `ort` with dynamic loading. The shared library is
//! found via `ORT_DYLIB_PATH`, else the project's install location
//! (`.ort/lib/`, filled by `scripts/install-ort.sh` from the `onnxruntime`
//! wheel on PyPI), else beside the executable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session as OrtSession;
use ort::value::{Tensor, TensorRef};

use crate::backend::{Backend, CacheUse, GraphKey, Session, Value, ValueRef};
use crate::{Error, Result};

fn err(backend: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: backend.into(),
        message: e.to_string(),
    }
}

/// Candidate locations of `libonnxruntime.so`, in search order.
pub fn dylib_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        c.push(PathBuf::from(p));
    }
    let lib = if cfg!(target_os = "macos") {
        "libonnxruntime.dylib"
    } else if cfg!(windows) {
        "onnxruntime.dll"
    } else {
        "libonnxruntime.so"
    };
    c.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.ort/lib")
            .join(lib),
    );
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            c.push(dir.join(lib));
            c.push(dir.join("../../.ort/lib").join(lib));
        }
    }
    c
}

/// Whether a committed session has put the `ai.flamingo` domain in ONNX Runtime's global map.
static DOMAIN_REGISTERED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

static INIT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Loads ONNX Runtime once per process; returns the library path and environment.
pub fn init() -> Result<(PathBuf, ort::environment::Environment)> {
    INIT.get_or_init(|| {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
            if !Path::new(&p).exists() {
                return Err(format!(
                    "ORT_DYLIB_PATH points to {}, which does not exist",
                    Path::new(&p).display()
                ));
            }
        }
        let cands = dylib_candidates();
        let Some(path) = cands.iter().find(|p| p.exists()).cloned() else {
            return Err(format!(
                "ONNX Runtime's shared library was not found (looked at: {}). Run scripts/install-ort.sh \
                 (it fetches the onnxruntime==1.31.1 wheel from PyPI) or set ORT_DYLIB_PATH to libonnxruntime.so",
                cands.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        };
        let builder = ort::init_from(&path)
            .map_err(|e| format!("loading {}: {e}", path.display()))?;
        let env = builder
            .with_name("flamingo")
            .build()
            .map_err(|e| format!("initialising ONNX Runtime from {}: {e}", path.display()))?;
        Ok((path, env))
    })
    .clone()
    .map_err(|m| err("ort", m))
}

/// Which execution providers a backend registers (each falls back per node
/// to the next, then to the CPU).
#[derive(Clone, Debug, PartialEq)]
pub enum Providers {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(crate::gpu::GpuOptions),
    #[cfg(feature = "tensorrt")]
    TensorRt(crate::gpu::GpuOptions, Box<flamingo_contract::Manifest>),
}

/// ONNX Runtime with the CPU, CUDA or TensorRT execution provider.
pub struct OrtBackend {
    env: ort::environment::Environment,
    threads: usize,
    providers: Providers,
    name: &'static str,
}

impl Providers {
    /// Where resident values live: the GPU's memory, or the host's.
    fn device(&self) -> (ort::memory::AllocationDevice<'static>, i32) {
        match self {
            Providers::Cpu => (ort::memory::AllocationDevice::CPU, 0),
            #[cfg(feature = "cuda")]
            Providers::Cuda(o) => (ort::memory::AllocationDevice::CUDA, o.device_id),
            #[cfg(feature = "tensorrt")]
            Providers::TensorRt(o, _) => (ort::memory::AllocationDevice::CUDA, o.device_id),
        }
    }
}

impl OrtBackend {
    pub fn cpu() -> Result<OrtBackend> {
        Self::with(Providers::Cpu, "ort-cpu")
    }

    pub fn with(providers: Providers, name: &'static str) -> Result<OrtBackend> {
        let (_, env) = init()?;
        Ok(OrtBackend {
            env,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            providers,
            name,
        })
    }

    /// The execution providers for the graph at `path`, most preferred first.
    fn dispatch(&self, path: &Path) -> Result<Vec<ort::ep::ExecutionProviderDispatch>> {
        let _role = path.file_stem().and_then(|s| s.to_str()).unwrap_or("graph");
        match &self.providers {
            Providers::Cpu => Ok(vec![]),
            #[cfg(feature = "cuda")]
            Providers::Cuda(o) => Ok(vec![cuda(o).build().error_on_failure()]),
            #[cfg(feature = "tensorrt")]
            Providers::TensorRt(o, m) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let cache = crate::gpu::engine_cache_dir(dir, _role, o);
                std::fs::create_dir_all(&cache)
                    .map_err(|e| err(self.name, format!("{}: {e}", cache.display())))?;
                let mut trt = ort::ep::TensorRT::default()
                    .with_device_id(o.device_id)
                    .with_fp16(o.trt_fp16)
                    .with_int8(o.trt_int8)
                    .with_engine_cache(true)
                    .with_engine_cache_path(cache.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(cache.display());
                if let Some(t) = crate::gpu::calibration_table(_role, o) {
                    trt = trt.with_int8_calibration_table_name(t.display());
                }
                let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
                if let Some(g) = m.graphs.values().find(|g| g.file == file) {
                    let p = crate::gpu::profile(m, g, &o.limits);
                    if !p.min.is_empty() {
                        use crate::gpu::Profile;
                        trt = trt
                            .with_profile_min_shapes(Profile::shapes(&p.min))
                            .with_profile_opt_shapes(Profile::shapes(&p.opt))
                            .with_profile_max_shapes(Profile::shapes(&p.max));
                    }
                }
                Ok(vec![trt.build().error_on_failure(), cuda(o).build()])
            }
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(o: &crate::gpu::GpuOptions) -> ort::ep::CUDA {
    let mut c = ort::ep::CUDA::default().with_device_id(o.device_id);
    if let Some(limit) = o.memory_limit {
        c = c.with_memory_limit(limit);
    }
    c
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    fn load(&self, path: &Path) -> Result<Box<dyn Session>> {
        self.build(path, Build::Source)
    }

    fn load_cached(
        &self,
        path: &Path,
        key: Option<&GraphKey>,
    ) -> Result<(Box<dyn Session>, CacheUse)> {
        match key {
            Some(key) if self.name == "ort-cpu" => self.through_cache(path, key),
            _ => Ok((self.load(path)?, CacheUse::Off)),
        }
    }
}

/// What [`OrtBackend::build`] builds a session from.
enum Build<'a> {
    /// The export's graph, optimised now.
    Source,
    /// The export's graph, optimised now and saved (prepacked weights
    /// included) as the `.onnx` at this path.
    Save(&'a Path),
    /// A graph saved by `Save`: already optimised.
    Cached,
}

/// The file name of a cached optimised graph (its data beside it).
const CACHED_GRAPH: &str = "graph.onnx";

impl OrtBackend {
    /// A session for `path` from the optimised-graph cache, or optimised
    /// now and saved there; the plain load where the cache cannot be
    /// written (a read-only export, a full disk).
    fn through_cache(&self, path: &Path, key: &GraphKey) -> Result<(Box<dyn Session>, CacheUse)> {
        use crate::graph_cache;
        let id = graph_cache::id(key, "ort", ort::info());
        let entry = graph_cache::entry_dir(key, "ort", &id);
        if graph_cache::valid(&entry, &id) {
            if let Ok(s) = self.build(&entry.join(CACHED_GRAPH), Build::Cached) {
                return Ok((s, CacheUse::Hit));
            }
            graph_cache::discard(&entry);
        }
        let tmp = match graph_cache::staging(key, "ort") {
            Ok(t) => t,
            Err(e) => return Ok((self.load(path)?, CacheUse::Unwritable(e.to_string()))),
        };
        match self.build(path, Build::Save(&tmp.join(CACHED_GRAPH))) {
            Ok(s) => match graph_cache::commit(&tmp, &entry, &id) {
                Ok(()) => Ok((s, CacheUse::Built)),
                Err(e) => Ok((s, CacheUse::Unwritable(e.to_string()))),
            },
            Err(e) => {
                graph_cache::discard(&tmp);
                // a graph that does not load gives its own error here
                let s = self.load(path)?;
                Ok((
                    s,
                    CacheUse::Unwritable(format!("saving the optimised graph: {e}")),
                ))
            }
        }
    }

    fn build(&self, path: &Path, how: Build<'_>) -> Result<Box<dyn Session>> {
        let name = self.name;
        let ctx = |e: ort::Error| {
            let hint = if name == "ort-cpu" {
                String::new()
            } else {
                " (the GPU provider needs a GPU, the onnxruntime-gpu libraries with \
                  libonnxruntime_providers_cuda.so (and _tensorrt.so) beside libonnxruntime.so, \
                  and CUDA 13 / cuDNN 9 / TensorRT on the library path)"
                    .to_string()
            };
            err(name, format!("loading {}: {e}{hint}", path.display()))
        };
        let eps = self.dispatch(path)?;
        let level = match how {
            Build::Cached => GraphOptimizationLevel::Disable,
            _ => GraphOptimizationLevel::Level3,
        };
        let mut b = OrtSession::builder(&self.env)
            .map_err(ctx)?
            .with_optimization_level(level)
            .map_err(|e| ctx(e.into()))?
            .with_intra_threads(self.threads)
            .map_err(|e| ctx(e.into()))?
            // this runtime's own kernels (`ai.flamingo` domain)
            .with_operators(crate::ort_quant::domain().map_err(ctx)?)
            .map_err(|e| ctx(e.into()))?;
        if !eps.is_empty() {
            b = b.with_execution_providers(eps).map_err(|e| ctx(e.into()))?;
        }
        if let Build::Save(to) = how {
            let data = format!(
                "{}.data",
                to.file_name().and_then(|f| f.to_str()).unwrap_or("")
            );
            b = b
                .with_optimized_model_path(to)
                .map_err(|e| ctx(e.into()))?
                .with_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    data,
                )
                .map_err(|e| ctx(e.into()))?
                .with_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes",
                    "1024",
                )
                .map_err(|e| ctx(e.into()))?
                .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
                .map_err(|e| ctx(e.into()))?;
        }
        let session = {
            // ONNX Runtime adds a custom domain to its process-wide version map at the first
            // commit and checks-then-adds without a lock: two threads committing their first
            // sessions at once fail with "domain is already exist". Commit under a lock until
            // one commit has put `ai.flamingo` in the map; later commits run unlocked.
            let mut registered = DOMAIN_REGISTERED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *registered {
                drop(registered);
                b.commit_from_file(path).map_err(ctx)?
            } else {
                let session = b.commit_from_file(path).map_err(ctx)?;
                *registered = true;
                session
            }
        };
        Ok(Box::new(OrtCpuSession {
            session,
            device: self.providers.device(),
            provider: match name {
                "ort-cuda" => "ort:CUDAExecutionProvider (CPU fallback per node)",
                "ort-tensorrt" => {
                    "ort:TensorrtExecutionProvider (CUDA, then CPU fallback per node)"
                }
                _ => "ort:CPUExecutionProvider",
            },
        }))
    }
}

/// An owned array from an output (empty outputs may carry no data pointer).
fn to_array<T: Copy>(shape: &[i64], data: &[T]) -> Result<ndarray::ArrayD<T>> {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let numel: usize = dims.iter().product();
    let values = if numel == 0 {
        Vec::new()
    } else {
        data[..numel.min(data.len())].to_vec()
    };
    ndarray::ArrayD::from_shape_vec(dims, values).map_err(|x| err("ort-cpu", x))
}

struct OrtCpuSession {
    session: OrtSession,
    device: (ort::memory::AllocationDevice<'static>, i32),
    provider: &'static str,
}

/// An ONNX Runtime tensor kept between runs (device memory under CUDA).
/// Locked while a run binds it: an in-place output needs it mutably.
struct OrtResident {
    value: std::sync::Mutex<ort::value::DynTensor>,
    shape: Vec<usize>,
}

impl OrtResident {
    fn new(value: ort::value::DynTensor, shape: Vec<usize>) -> OrtResident {
        OrtResident {
            value: std::sync::Mutex::new(value),
            shape,
        }
    }
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ort::value::DynTensor>> {
        self.value
            .lock()
            .map_err(|_| err("ort", "a resident tensor's lock was poisoned"))
    }
}

impl crate::backend::ResidentValue for OrtResident {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn to_host(&self) -> Result<Value> {
        let e = |e: ort::Error| err("ort", e);
        let value = self.lock()?;
        if value.memory_info().is_cpu_accessible() {
            return host_value(&*value).map_err(e)?;
        }
        let host = value.to(ort::memory::AllocationDevice::CPU, 0).map_err(e)?;
        host_value(&host).map_err(e)?
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A host copy of an ONNX Runtime tensor (float32 or int64).
fn host_value<T: ort::value::TensorValueTypeMarker + ?Sized>(
    v: &ort::value::Value<T>,
) -> std::result::Result<Result<Value>, ort::Error> {
    Ok(if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
        to_array(shape, data).map(Value::F32)
    } else {
        let (shape, data) = v.try_extract_tensor::<i64>()?;
        to_array(shape, data).map(Value::I64)
    })
}

/// An owned ONNX Runtime tensor from host data.
fn owned<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
    a: &ndarray::ArrayViewD<'_, T>,
) -> std::result::Result<ort::value::DynTensor, ort::Error> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_array((shape, a.iter().cloned().collect::<Vec<T>>()))?.upcast())
}

/// Host tensors at least this large are copied into the session's arena.
const ARENA_MIN_BYTES: usize = 1 << 20;

/// [`alloc_copy`] for tensors of [`ARENA_MIN_BYTES`] or more, [`owned`]
/// for smaller ones.
fn arena_copy<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
    alloc: &ort::memory::Allocator,
    a: &ndarray::ArrayViewD<'_, T>,
) -> std::result::Result<ort::value::DynTensor, ort::Error> {
    // small tensors come from the heap, whose free pages go back to the
    // system when the server idles; the arena keeps what it has grown to
    if a.len() * std::mem::size_of::<T>() < ARENA_MIN_BYTES {
        return owned(a);
    }
    alloc_copy(alloc, a)
}

/// A copy of `a` allocated by `alloc` (the session's arena on the CPU
/// provider: memory earlier steps freed is reused, so the KV cache a batch
/// re-lays after rows join or leave touches no fresh pages), in one go
/// when contiguous.
fn alloc_copy<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
    alloc: &ort::memory::Allocator,
    a: &ndarray::ArrayViewD<'_, T>,
) -> std::result::Result<ort::value::DynTensor, ort::Error> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let mut t = Tensor::<T>::new(alloc, shape)?;
    let (_, data) = t.try_extract_tensor_mut()?;
    match a.as_slice() {
        Some(src) => data.clone_from_slice(src),
        None => data
            .iter_mut()
            .zip(a.iter())
            .for_each(|(d, s)| *d = s.clone()),
    }
    Ok(t.upcast())
}

impl OrtCpuSession {
    /// A tensor holding a copy of `a`: [`arena_copy`] on the CPU provider,
    /// else a host tensor of its own (copied to the device when bound).
    fn host_copy<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &self,
        a: &ndarray::ArrayViewD<'_, T>,
    ) -> std::result::Result<ort::value::DynTensor, ort::Error> {
        if self.device.0 == ort::memory::AllocationDevice::CPU {
            arena_copy(self.session.allocator(), a)
        } else {
            owned(a)
        }
    }

    fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// [`Session::run_io`], the outputs in `into` written into those
    /// resident tensors (bound as the outputs, not returned).
    fn bind_and_run(
        &mut self,
        inputs: Vec<(&str, crate::backend::Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
        into: &[(&str, &crate::backend::Resident)],
    ) -> Result<crate::backend::IoOutputs> {
        use crate::backend::{Input, Resident};
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let e = |e: ort::Error| err("ort", e);
        let mut binding = self.session.create_binding().map_err(e)?;
        for (name, i) in &inputs {
            match i {
                Input::Host(ValueRef::F32(a)) => {
                    binding.bind_input(*name, &self.host_copy(a).map_err(e)?)
                }
                Input::Host(ValueRef::I64(a)) => {
                    binding.bind_input(*name, &self.host_copy(a).map_err(e)?)
                }
                Input::Resident(r) => {
                    let value = resident(name, r)?.lock()?;
                    binding.bind_input(*name, &*value)
                }
            }
            .map_err(e)?;
        }
        for (name, r) in into {
            let mut value = resident(name, r)?.lock()?;
            binding.bind_output(*name, value.view_mut()).map_err(e)?;
        }
        let (dev, id) = &self.device;
        let on_device =
            MemoryInfo::new(dev.clone(), *id, AllocatorType::Device, MemoryType::Default)
                .map_err(e)?;
        let on_host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(e)?;
        let names: Vec<String> = self
            .output_names()
            .into_iter()
            .filter(|n| !into.iter().any(|(i, _)| i == n))
            .collect();
        for n in &names {
            let at = if keep(n) { &on_device } else { &on_host };
            binding.bind_output_to_device(n.as_str(), at).map_err(e)?;
        }
        let mut outs = self.session.run_binding(&binding).map_err(e)?;
        let (mut host, mut kept) = (HashMap::new(), HashMap::new());
        for n in names {
            let v = outs
                .remove(n.as_str())
                .ok_or_else(|| err("ort", format!("no output `{n}`")))?;
            if keep(&n) {
                let value = v.downcast::<ort::value::DynTensorValueType>().map_err(e)?;
                let shape = value.shape().iter().map(|&d| d.max(0) as usize).collect();
                kept.insert(
                    n,
                    Resident(std::sync::Arc::new(OrtResident::new(value, shape))),
                );
            } else {
                host.insert(n, host_value(&v).map_err(e)??);
            }
        }
        Ok((host, kept))
    }
}

/// The ONNX Runtime tensor behind a resident value.
fn resident<'r>(name: &str, r: &'r crate::backend::Resident) -> Result<&'r OrtResident> {
    r.0.as_any()
        .downcast_ref::<OrtResident>()
        .ok_or_else(|| Error::Input(format!("`{name}` is held by another backend")))
}

impl Session for OrtCpuSession {
    fn run(&mut self, inputs: Vec<(&str, ValueRef<'_>)>) -> Result<HashMap<String, Value>> {
        let e = |e: ort::Error| err("ort", e);
        fn input<
            'v,
            T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
        >(
            a: &'v ndarray::ArrayViewD<'v, T>,
        ) -> std::result::Result<ort::session::SessionInputValue<'v>, ort::Error> {
            let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
            Ok(match a.as_slice() {
                // contiguous: ONNX Runtime reads our memory, no copy
                Some(data) => TensorRef::from_array_view((shape, data))?.into_dyn().into(),
                None => Tensor::from_array((shape, a.iter().cloned().collect::<Vec<T>>()))?
                    .into_dyn()
                    .into(),
            })
        }
        let mut ins: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, v) in &inputs {
            let value = match v {
                ValueRef::F32(a) => input(a).map_err(e)?,
                ValueRef::I64(a) => input(a).map_err(e)?,
            };
            ins.push((name.to_string(), value));
        }
        let names = self.output_names();
        let outs = self.session.run(ins).map_err(e)?;
        let mut res = HashMap::new();
        for name in names {
            let val = host_value(&outs[name.as_str()]).map_err(e)??;
            res.insert(name, val);
        }
        Ok(res)
    }
    fn provider(&self) -> String {
        self.provider.into()
    }

    /// I/O binding: resident inputs are bound as they are, kept outputs are
    /// allocated on the session's device and stay there; the rest (e.g. the
    /// last position's logits) are copied to the host.
    fn run_io(
        &mut self,
        inputs: Vec<(&str, crate::backend::Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<crate::backend::IoOutputs> {
        self.bind_and_run(inputs, keep, &[])
    }

    fn run_io_into(
        &mut self,
        inputs: Vec<(&str, crate::backend::Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
        into: &[(&str, &crate::backend::Resident)],
    ) -> Result<crate::backend::IoOutputs> {
        self.bind_and_run(inputs, keep, into)
    }

    /// On the CPU provider, where a buffer bound as both a kernel's input
    /// and its output is the same memory to the kernel.
    fn updates_in_place(&self) -> bool {
        self.device.0 == ort::memory::AllocationDevice::CPU
    }

    fn upload(&self, v: ValueRef<'_>) -> Result<crate::backend::Resident> {
        let e = |e: ort::Error| err("ort", e);
        let value = match &v {
            ValueRef::F32(a) => self.host_copy(a),
            ValueRef::I64(a) => self.host_copy(a),
        }
        .map_err(e)?;
        let (dev, id) = &self.device;
        let value = if *dev == ort::memory::AllocationDevice::CPU {
            value
        } else {
            value.to(dev.clone(), *id).map_err(e)?
        };
        Ok(crate::backend::Resident(std::sync::Arc::new(
            OrtResident::new(value, v.shape().to_vec()),
        )))
    }

    fn binds_io(&self) -> bool {
        true
    }

    /// A tensor ONNX Runtime allocated (outputs can only be bound to those).
    fn buffer(&self, v: &Value) -> Result<crate::backend::Resident> {
        let e = |e: ort::Error| err("ort", e);
        let Value::F32(a) = v else {
            return self.upload(v.view());
        };
        if !self.updates_in_place() {
            return self.upload(v.view());
        }
        let t = alloc_copy(self.session.allocator(), &a.view()).map_err(e)?;
        Ok(crate::backend::Resident(std::sync::Arc::new(
            OrtResident::new(t, a.shape().to_vec()),
        )))
    }
}
