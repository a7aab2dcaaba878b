//! The native half of the `flamingo` Python package (`flamingo._flamingo`).
//!
//! The Python half (`flamingo/__init__.py`) turns what users pass (paths,
//! bytes, PIL images, numpy arrays; keyword options) into the plain values
//! these functions take, and their JSON answers into dataclasses. Every
//! graph runs with the GIL released; a runtime error becomes a
//! `flamingo.FlamingoError` carrying the runtime's message.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use flamingo_calibration::weights::{BlockOptions, QuantizeSpec, WeightBits, WeightKind};
use flamingo_contract::{Manifest, Precision};
use flamingo_runtime::{
    BackendKind, GenerateOptions, Generation, Limits, LoadOptions, Media, Pipeline, Request,
};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use serde_json::{json, Map, Value};

pyo3::create_exception!(
    _flamingo,
    FlamingoError,
    PyException,
    "An error of the flamingo runtime, exporter or quantiser; the message says what and where."
);

fn err(e: impl std::fmt::Display) -> PyErr {
    FlamingoError::new_err(e.to_string())
}

/// Keyword options as a JSON object, taken one by one; what is left over is
/// an error naming it and what is known.
struct Options {
    what: &'static str,
    map: Map<String, Value>,
    known: Vec<&'static str>,
}

impl Options {
    fn parse(what: &'static str, json: &str) -> PyResult<Options> {
        let v: Value = serde_json::from_str(json).map_err(err)?;
        let Value::Object(map) = v else {
            return Err(err(format!("{what}: options must be keyword arguments")));
        };
        Ok(Options {
            what,
            map,
            known: Vec::new(),
        })
    }

    fn take(&mut self, key: &'static str) -> Option<Value> {
        self.known.push(key);
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, want: &str) -> PyErr {
        err(format!("{}: `{key}` must be {want}", self.what))
    }

    fn bool(&mut self, key: &'static str, default: bool) -> PyResult<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(_) => Err(self.bad(key, "a bool")),
        }
    }

    fn u64(&mut self, key: &'static str) -> PyResult<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "an int >= 0")),
        }
    }

    fn string(&mut self, key: &'static str) -> PyResult<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    fn path(&mut self, key: &'static str) -> PyResult<Option<PathBuf>> {
        Ok(self.string(key)?.map(PathBuf::from))
    }

    fn required_path(&mut self, key: &'static str) -> PyResult<PathBuf> {
        self.path(key)?
            .ok_or_else(|| err(format!("{}: `{key}` is required", self.what)))
    }

    /// Fails on any option not taken.
    fn finish(self) -> PyResult<()> {
        if let Some(k) = self.map.keys().next() {
            let mut known = self.known.clone();
            known.sort_unstable();
            return Err(err(format!(
                "{}: unknown option `{k}` (known: {})",
                self.what,
                known.join(", ")
            )));
        }
        Ok(())
    }
}

/// One frame as the Python half hands it over: `("path", str)`,
/// `("file", bytes)` (an encoded image file) or `("rgb", bytes, w, h, c)`
/// (HWC uint8 pixels, 1, 3 or 4 channels).
enum Frame {
    Path(PathBuf),
    File(Vec<u8>),
    Pixels(Vec<u8>, u32, u32, u32),
}

fn bytes_of(v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    Ok(v.cast::<PyBytes>()?.as_bytes().to_vec())
}

fn frame_of(v: &Bound<'_, PyAny>, at: &str) -> PyResult<Frame> {
    let kind: String = v.get_item(0)?.extract()?;
    Ok(match kind.as_str() {
        "path" => Frame::Path(v.get_item(1)?.extract()?),
        "file" => Frame::File(bytes_of(&v.get_item(1)?)?),
        "rgb" => Frame::Pixels(
            bytes_of(&v.get_item(1)?)?,
            v.get_item(2)?.extract()?,
            v.get_item(3)?.extract()?,
            v.get_item(4)?.extract()?,
        ),
        other => return Err(err(format!("{at}: unknown frame kind {other:?}"))),
    })
}

/// Media items in prompt order; a video is its list of frames.
enum Item {
    Image(Frame),
    Video(Vec<Frame>),
}

fn items_of(v: &Bound<'_, PyAny>) -> PyResult<Vec<Item>> {
    let mut items = Vec::new();
    for (i, item) in v.try_iter()?.enumerate() {
        let item = item?;
        let at = format!("images[{i}]");
        items.push(if item.is_instance_of::<PyList>() {
            Item::Video(
                item.try_iter()?
                    .map(|f| frame_of(&f?, &at))
                    .collect::<PyResult<_>>()?,
            )
        } else {
            Item::Image(frame_of(&item, &at)?)
        });
    }
    Ok(items)
}

/// HWC pixels as an RGB image.
fn rgb_of(px: Vec<u8>, w: u32, h: u32, c: u32) -> Option<image::RgbImage> {
    let n = (w as usize).checked_mul(h as usize)?;
    if px.len() != n.checked_mul(c as usize)? {
        return None;
    }
    let rgb = match c {
        3 => px,
        1 => px.iter().flat_map(|&g| [g, g, g]).collect(),
        4 => px
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        _ => return None,
    };
    image::RgbImage::from_raw(w, h, rgb)
}

/// Media of one request: paths as given, in-memory images written to
/// `dir` (removed with it after the call); the runtime bounds what it reads
/// from either.
fn media_of(items: Vec<Item>, dir: &Path, limits: &Limits) -> PyResult<Vec<Media>> {
    let mut n = 0usize;
    let mut file_of = |f: Frame, at: String| -> PyResult<PathBuf> {
        n += 1;
        let path = dir.join(format!("{n}.img"));
        match f {
            Frame::Path(p) => return Ok(p),
            Frame::File(bytes) => {
                std::fs::write(&path, bytes).map_err(|e| err(format!("{at}: {e}")))?;
            }
            Frame::Pixels(px, w, h, c) => {
                let pixels = u64::from(w) * u64::from(h);
                if pixels > limits.max_image_pixels {
                    return Err(err(format!(
                        "{at}: {w}x{h} pixels is over max_image_pixels {}",
                        limits.max_image_pixels
                    )));
                }
                let img = rgb_of(px, w, h, c).ok_or_else(|| {
                    err(format!(
                        "{at}: the pixels are not {h}x{w}x{c} bytes (c = 1, 3 or 4)"
                    ))
                })?;
                img.save_with_format(&path, image::ImageFormat::Png)
                    .map_err(|e| err(format!("{at}: {e}")))?;
            }
        }
        Ok(path)
    };
    let mut media = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        media.push(match item {
            Item::Image(f) => Media::Image(file_of(f, format!("images[{i}]"))?),
            Item::Video(frames) => Media::Video(
                frames
                    .into_iter()
                    .enumerate()
                    .map(|(j, f)| file_of(f, format!("images[{i}][{j}]")))
                    .collect::<PyResult<_>>()?,
            ),
        });
    }
    Ok(media)
}

fn scratch() -> PyResult<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("flamingo-py-")
        .tempdir()
        .map_err(|e| err(format!("a scratch directory for in-memory images: {e}")))
}

/// Generation options: `GenerateOptions`' fields, plus `stop` (token strings).
fn generate_options(p: &Pipeline, json: &str) -> PyResult<GenerateOptions> {
    let mut o = Options::parse("generate", json)?;
    let stop = o.take("stop");
    let mut opts = serde_json::to_value(GenerateOptions::default()).map_err(err)?;
    let mut known: Vec<String> = opts
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for (k, v) in std::mem::take(&mut o.map) {
        if opts.get(&k).is_none() {
            known.push("stop".into());
            known.sort_unstable();
            return Err(err(format!(
                "generate: unknown option `{k}` (known: {})",
                known.join(", ")
            )));
        }
        opts[k] = v;
    }
    let mut opts: GenerateOptions =
        serde_json::from_value(opts).map_err(|e| err(format!("generate: {e}")))?;
    match stop {
        None => {}
        Some(Value::Array(items)) => {
            for s in items {
                let s = s
                    .as_str()
                    .ok_or_else(|| err("generate: `stop` must be a list of token strings"))?;
                let id = p.tokenizer.token_id(s).ok_or_else(|| {
                    err(format!(
                        "generate: stop {s:?} is not a single token of this tokenizer"
                    ))
                })?;
                opts.stop_tokens.push(id);
            }
        }
        Some(_) => return Err(err("generate: `stop` must be a list of token strings")),
    }
    Ok(opts)
}

/// The CLI's `--json` object of a generation.
fn generation_json(g: &Generation) -> String {
    let first = g.sequences.first();
    json!({
        "prompt_ids": g.prompt_ids,
        "generated_ids": first.map(|s| s.generated_ids.clone()).unwrap_or_default(),
        "text": first.map(|s| s.text.clone()).unwrap_or_default(),
        "sequences": g.sequences,
    })
    .to_string()
}

type Shared = Arc<Mutex<Pipeline>>;

fn lock(p: &Shared) -> PyResult<std::sync::MutexGuard<'_, Pipeline>> {
    p.lock()
        .map_err(|_| err("the pipeline is unusable: an earlier call panicked inside it"))
}

/// A loaded export (`flamingo.Pipeline` wraps it).
#[pyclass(module = "flamingo._flamingo", frozen)]
struct NativePipeline {
    inner: Shared,
    backend: BackendKind,
    manifest: String,
}

/// A request of a batch: prompt, media, options as JSON.
type BatchItem<'py> = (String, Bound<'py, PyAny>, String);

#[pymethods]
impl NativePipeline {
    #[new]
    fn new(py: Python<'_>, model_dir: PathBuf, backend: &str, options: &str) -> PyResult<Self> {
        let backend: BackendKind = backend.parse().map_err(err)?;
        let mut o = Options::parse("Pipeline", options)?;
        let d = Limits::default();
        let limits = Limits {
            max_media: o.u64("max_media")?.map_or(d.max_media, |v| v as usize),
            max_media_bytes: o.u64("max_media_bytes")?.unwrap_or(d.max_media_bytes),
            max_image_pixels: o.u64("max_image_pixels")?.unwrap_or(d.max_image_pixels),
            max_beams: o.u64("max_beams")?.map_or(d.max_beams, |v| v as usize),
            max_candidates: o
                .u64("max_candidates")?
                .map_or(d.max_candidates, |v| v as usize),
        };
        let mut load = LoadOptions {
            no_verify: o.bool("no_verify", false)?,
            no_graph_cache: o.bool("no_graph_cache", false)?,
            ..Default::default()
        };
        let gpu = &mut load.gpu;
        gpu.device_id = o.u64("device_id")?.unwrap_or(0) as i32;
        gpu.memory_limit = o.u64("gpu_mem_limit")?.map(|v| v as usize);
        gpu.trt_fp16 = o.bool("trt_fp16", false)?;
        gpu.trt_int8 = o.bool("trt_int8", false)?;
        gpu.calibration_dir = o.path("trt_calibration")?;
        gpu.cache_dir = o.path("trt_cache")?;
        let cache_bytes = o.u64("media_cache_bytes")?;
        o.finish()?;
        let mut p = py
            .detach(|| Pipeline::load_opts(&model_dir, backend, &load))
            .map_err(err)?;
        p.model.limits = limits;
        if let Some(b) = cache_bytes {
            p.set_media_cache_bytes(b as usize);
        }
        let manifest = p.model.manifest.to_json();
        Ok(NativePipeline {
            inner: Arc::new(Mutex::new(p)),
            backend,
            manifest,
        })
    }

    #[getter]
    fn backend(&self) -> &'static str {
        self.backend.as_str()
    }

    /// The export's manifest as JSON.
    #[getter]
    fn manifest(&self) -> &str {
        &self.manifest
    }

    /// Hits, misses and bytes of the media cache, as JSON.
    fn media_cache_stats(&self) -> PyResult<String> {
        let s = lock(&self.inner)?.media_cache_stats();
        Ok(json!({"hits": s.hits, "misses": s.misses, "bytes": s.bytes}).to_string())
    }

    /// The prompt's token ids (`n_media` `<image>` markers checked).
    fn prompt_ids(&self, py: Python<'_>, prompt: &str, n_media: usize) -> PyResult<Vec<u32>> {
        let inner = &self.inner;
        py.detach(|| lock(inner)?.prompt_ids(prompt, n_media).map_err(err))
    }

    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        media: &Bound<'_, PyAny>,
        options: &str,
    ) -> PyResult<String> {
        let items = items_of(media)?;
        let dir = scratch()?;
        let inner = &self.inner;
        // the lock is taken without the GIL: another thread's generation
        // holding it does not stop this process's Python
        py.detach(|| {
            let mut p = lock(inner)?;
            let req = request_of(&p, prompt, items, options, dir.path())?;
            let g = p.generate(&req).map_err(err)?;
            Ok(generation_json(&g))
        })
    }

    /// Each request's JSON, or its error message (`(ok, text)` pairs).
    fn generate_batch(
        &self,
        py: Python<'_>,
        requests: Vec<BatchItem<'_>>,
    ) -> PyResult<Vec<(bool, String)>> {
        let dir = scratch()?;
        let inner = &self.inner;
        let n = requests.len();
        let parsed: Vec<PyResult<(String, Vec<Item>, String)>> = requests
            .into_iter()
            .map(|(prompt, media, options)| Ok((prompt, items_of(&media)?, options)))
            .collect();
        py.detach(|| {
            let mut p = lock(inner)?;
            let mut out: Vec<Option<(bool, String)>> = vec![None; n];
            let (mut reqs, mut at) = (Vec::new(), Vec::new());
            for (i, r) in parsed.into_iter().enumerate() {
                let sub = dir.path().join(i.to_string());
                let made = r.and_then(|(prompt, items, options)| {
                    std::fs::create_dir(&sub).map_err(err)?;
                    request_of(&p, prompt, items, &options, &sub)
                });
                match made {
                    Ok(r) => {
                        reqs.push(r);
                        at.push(i);
                    }
                    Err(e) => out[i] = Some((false, format!("requests[{i}]: {e}"))),
                }
            }
            for (i, r) in at.into_iter().zip(p.generate_batch(&reqs)) {
                out[i] = Some(match r {
                    Ok(g) => (true, generation_json(&g)),
                    Err(e) => (false, format!("requests[{i}]: {e}")),
                });
            }
            Ok(out.into_iter().flatten().collect())
        })
    }

    /// Streams tokens from a thread of its own: the pipeline stays locked
    /// until the stream ends or is closed. The channel is unbounded (a
    /// generation is at most `max_new_tokens` tokens), so an unread stream
    /// never blocks the generation, nor the pipeline's next call.
    fn generate_stream(
        &self,
        prompt: String,
        media: &Bound<'_, PyAny>,
        options: String,
    ) -> PyResult<Stream> {
        let items = items_of(media)?;
        let dir = scratch()?;
        let (tx, rx) = channel::<Event>();
        let cancel = Arc::new(AtomicBool::new(false));
        let (inner, stop) = (self.inner.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("flamingo-stream".into())
            .spawn(move || {
                let done = (|| {
                    let mut p = lock(&inner)?;
                    let req = request_of(&p, prompt, items, &options, dir.path())?;
                    p.generate_stream(&req, &mut |t| {
                        !stop.load(Ordering::Relaxed)
                            && tx.send(Event::Token(t.token, t.text.to_string())).is_ok()
                    })
                    .map_err(err)
                })()
                .map(|g| generation_json(&g))
                .map_err(|e| e.to_string());
                drop(dir);
                let _ = tx.send(Event::Done(done));
            })
            .map_err(|e| err(format!("cannot start the stream's thread: {e}")))?;
        Ok(Stream {
            rx: Mutex::new(Some(rx)),
            cancel,
            result: Mutex::new(None),
        })
    }

    /// Close-ended scoring: `{"candidates": [...], "best": i}` as JSON.
    fn score(
        &self,
        py: Python<'_>,
        prompt: String,
        media: &Bound<'_, PyAny>,
        candidates: Vec<String>,
    ) -> PyResult<String> {
        let items = items_of(media)?;
        let dir = scratch()?;
        let inner = &self.inner;
        py.detach(|| {
            let mut p = lock(inner)?;
            let media = media_of(items, dir.path(), &p.model.limits)?;
            let scores = p.score(&prompt, &media, &candidates).map_err(err)?;
            let best = scores
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.logprob_sum.total_cmp(&y.1.logprob_sum))
                .map_or(0, |(i, _)| i);
            Ok(json!({"candidates": scores, "best": best}).to_string())
        })
    }
}

/// A request from what the Python half handed over: in-memory media
/// written under `dir`, options parsed against `p`'s tokenizer.
fn request_of(
    p: &Pipeline,
    prompt: String,
    items: Vec<Item>,
    options: &str,
    dir: &Path,
) -> PyResult<Request> {
    Ok(Request {
        prompt,
        media: media_of(items, dir, &p.model.limits)?,
        options: generate_options(p, options)?,
    })
}

enum Event {
    Token(u32, String),
    Done(Result<String, String>),
}

/// The tokens of one generation as they come (`flamingo.Stream` wraps it).
#[pyclass(module = "flamingo._flamingo", frozen)]
struct Stream {
    rx: Mutex<Option<Receiver<Event>>>,
    cancel: Arc<AtomicBool>,
    result: Mutex<Option<String>>,
}

#[pymethods]
impl Stream {
    /// The next `(token_id, text)`; `None` at the end (the result is then
    /// in `result`).
    fn next_token(&self, py: Python<'_>) -> PyResult<Option<(u32, String)>> {
        // waits without the GIL, the stream's lock taken without it too
        py.detach(|| {
            let mut guard = self.rx.lock().map_err(|_| err("the stream is unusable"))?;
            let Some(rx) = guard.as_mut() else {
                return Ok(None);
            };
            match rx.recv() {
                Ok(Event::Token(id, text)) => Ok(Some((id, text))),
                Ok(Event::Done(done)) => {
                    *guard = None;
                    let json = done.map_err(err)?;
                    if let Ok(mut r) = self.result.lock() {
                        *r = Some(json);
                    }
                    Ok(None)
                }
                Err(_) => {
                    *guard = None;
                    Err(err("the generation thread ended without a result"))
                }
            }
        })
    }

    /// The generation's JSON once the stream has ended.
    #[getter]
    fn result(&self) -> Option<String> {
        self.result.lock().ok().and_then(|r| r.clone())
    }

    /// Stops the generation after its current step.
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Ok(mut g) = self.rx.lock() {
            *g = None;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// What a serving front end needs of an export without its graphs (the
/// `--kind gpu` Triton orchestrator runs the graphs through Triton): the
/// tokenizer, the image preprocessing and the manifest.
#[pyclass(module = "flamingo._flamingo", frozen)]
struct Frontend {
    manifest: Manifest,
    tokenizer: flamingo_runtime::tokenizer::Tokenizer,
    max_image_pixels: u64,
}

#[pymethods]
impl Frontend {
    #[new]
    #[pyo3(signature = (model_dir, max_image_pixels = None))]
    fn new(model_dir: PathBuf, max_image_pixels: Option<u64>) -> PyResult<Self> {
        let manifest = Manifest::load(&model_dir).map_err(err)?;
        let tokenizer = flamingo_runtime::tokenizer::Tokenizer::load(&model_dir.join("tokenizer"))
            .map_err(err)?;
        Ok(Frontend {
            manifest,
            tokenizer,
            max_image_pixels: max_image_pixels.unwrap_or(Limits::default().max_image_pixels),
        })
    }

    /// The manifest as JSON.
    #[getter]
    fn manifest(&self) -> String {
        self.manifest.to_json()
    }

    /// The prompt's token ids, its `<image>` markers checked against `n_media`.
    fn prompt_ids(&self, prompt: &str, n_media: usize) -> PyResult<Vec<u32>> {
        let media = self.manifest.special_tokens.media;
        self.tokenizer
            .prompt_ids(prompt, media, n_media)
            .map_err(err)
    }

    /// Text of `ids`, special tokens skipped.
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.tokenizer.decode(&ids).map_err(err)
    }

    /// The id of a single-token string, if it is one.
    fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_id(token)
    }

    /// An encoded image file preprocessed as the vision encoder takes it:
    /// `[3, S, S]` float32 (little-endian bytes); `what` names it in errors.
    fn pixel_values<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        what: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let img = flamingo_runtime::preprocess::decode_image_within(data, self.max_image_pixels)
            .map_err(|m| err(format!("{what}: not a readable image: {m}")))?;
        let px = flamingo_runtime::preprocess::preprocess(&img, &self.manifest.preprocess);
        let bytes: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }
}

/// The manifest of an export, as JSON (`flamingo inspect --json`).
#[pyfunction]
fn inspect(dir: PathBuf) -> PyResult<String> {
    Ok(Manifest::load(&dir).map_err(err)?.to_json())
}

/// `flamingo export`: options as the CLI's flags (JSON); the manifest as JSON.
#[pyfunction]
fn export(py: Python<'_>, options: &str) -> PyResult<String> {
    let mut o = Options::parse("export", options)?;
    let out = o.required_path("out")?;
    let force = o.bool("force", false)?;
    let rewrite = match o.string("precision")?.as_deref() {
        None | Some("fp32") => None,
        Some("fp16") => Some((
            Precision::Fp16,
            flamingo_calibration::fp16::to_fp16 as flamingo_export::Rewrite,
        )),
        Some(other) => {
            return Err(err(format!(
                "export: unknown precision {other} (fp32 or fp16)"
            )))
        }
    };
    let preset = o.string("preset")?;
    let random = o.bool("random_weights", false)?;
    let m = if let Some(preset) = preset {
        if !random {
            return Err(err(
                "export: `preset` exports random weights: pass random_weights=True",
            ));
        }
        o.finish()?;
        py.detach(|| {
            flamingo_export::export_preset(
                &preset,
                &out,
                force,
                rewrite,
                &mut flamingo_export::NoProgress,
            )
        })
    } else {
        let d = flamingo_export::pickle::PickleLimits::default();
        let opts = flamingo_export::ExportOptions {
            clip: o.required_path("clip")?,
            vision_preset: o.string("vision_preset")?,
            lm: o.required_path("lm")?,
            checkpoint: o.required_path("checkpoint")?,
            tokenizer: o.path("tokenizer")?,
            cross_attn_every_n_layers: o.u64("cross_attn_every_n_layers")?.map(|n| n as usize),
            out,
            force,
            release: o.string("release")?,
            pickle_limits: flamingo_export::pickle::PickleLimits {
                max_depth: o.u64("max_pickle_depth")?.map_or(d.max_depth, |v| v as u32),
                max_objects: o.u64("max_pickle_objects")?.unwrap_or(d.max_objects),
            },
            rewrite,
        };
        if random {
            return Err(err("export: random_weights needs a `preset`"));
        }
        o.finish()?;
        py.detach(|| flamingo_export::export(&opts, &mut flamingo_export::NoProgress))
    };
    Ok(m.map_err(err)?.to_json())
}

/// `flamingo quantize`: weight-only int8/int4 of an fp32 export; the manifest as JSON.
#[pyfunction]
fn quantize(py: Python<'_>, input: PathBuf, out: PathBuf, options: &str) -> PyResult<String> {
    let mut o = Options::parse("quantize", options)?;
    let kind =
        WeightKind::parse(&o.string("weights")?.unwrap_or_else(|| "int8".into())).map_err(err)?;
    let block_size = o.u64("block_size")?.map(|v| v as usize);
    let d = BlockOptions::default();
    let spec = QuantizeSpec {
        bits: WeightBits::new(kind, block_size).map_err(err)?,
        opts: BlockOptions {
            symmetric: o.bool("symmetric", d.symmetric)?,
            head_bits: o.u64("head_bits")?.map_or(d.head_bits, |v| v as u32),
            plain_kv_cache: o.bool("plain_kv_cache", d.plain_kv_cache)?,
        },
        include_vision: o.bool("include_vision", false)?,
    };
    let force = o.bool("force", false)?;
    let data = o.path("data")?;
    let samples = o.u64("samples")?.map(|v| v as usize);
    let backend: BackendKind = o
        .string("backend")?
        .unwrap_or_else(|| "ort-cpu".into())
        .parse()
        .map_err(err)?;
    o.finish()?;
    spec.bits.check(&spec.opts, data.is_some()).map_err(err)?;
    py.detach(|| {
        let hessians = match &data {
            None => None,
            Some(data) => {
                flamingo_export::output::check_replaceable(&out, force, &[&input, data])
                    .map_err(err)?;
                let reqs = calibration_requests(data, samples)?;
                Some(
                    flamingo_calibration::calibrate::hessians(&input, &reqs, backend, &mut |_| {})
                        .map_err(err)?,
                )
            }
        };
        let m = flamingo_calibration::weights::quantize_export(
            &input,
            &out,
            force,
            &spec,
            hessians.as_ref(),
            &mut flamingo_export::NoProgress,
        )
        .map_err(err)?;
        Ok(m.to_json())
    })
}

/// `flamingo convert`: an fp32 export rewritten to fp16; the manifest as JSON.
#[pyfunction]
fn convert(
    py: Python<'_>,
    input: PathBuf,
    out: PathBuf,
    precision: &str,
    force: bool,
) -> PyResult<String> {
    if precision != "fp16" {
        return Err(err(format!(
            "convert: unknown precision {precision} (fp16)"
        )));
    }
    py.detach(|| {
        flamingo_calibration::convert::convert_fp32(
            &input,
            &out,
            force,
            Precision::Fp16,
            &|_, g| flamingo_calibration::fp16::to_fp16(g).map(Some),
            &mut flamingo_export::NoProgress,
        )
        .map(|m| m.to_json())
        .map_err(err)
    })
}

/// Calibration requests from a `generate --batch` JSONL file (8 new tokens
/// each, as `flamingo quantize --data`).
fn calibration_requests(path: &Path, samples: Option<usize>) -> PyResult<Vec<Request>> {
    let defaults = GenerateOptions {
        max_new_tokens: 8,
        ..Default::default()
    };
    let reqs =
        flamingo_runtime::pipeline::jsonl::read_requests(path, &defaults, samples).map_err(err)?;
    if reqs.is_empty() {
        return Err(err(format!("{}: no calibration requests", path.display())));
    }
    Ok(reqs)
}

#[pymodule]
fn _flamingo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FlamingoError", m.py().get_type::<FlamingoError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "BACKENDS",
        BackendKind::ALL
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>(),
    )?;
    m.add_class::<NativePipeline>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Frontend>()?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    Ok(())
}
