//! A loaded export: manifest, one session per graph, and the media pipeline
//! (preprocess -> vision encoder -> resampler).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flamingo_contract::{io, GraphRole, Manifest};
use ndarray::{Array4, ArrayD, Axis};

use crate::backend::{Backend, BackendKind, CacheUse, GraphKey, Session, Value, ValueRef};
use crate::limits::Limits;
use crate::preprocess::{load_image_within, preprocess};
use crate::{Error, Result};

/// One media item of a prompt: an image, or a video as its frames.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Media {
    Image(PathBuf),
    Video(Vec<PathBuf>),
}

impl Media {
    pub fn frames(&self) -> &[PathBuf] {
        match self {
            Media::Image(p) => std::slice::from_ref(p),
            Media::Video(f) => f,
        }
    }
}

/// What [`Model::encode`] returns for a list of media.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// `[total_frames, P, D]`, the vision tokens of every frame in order.
    pub vision_tokens: ArrayD<f32>,
    /// `[1, T, n_latents, D]`.
    pub latents: ArrayD<f32>,
}

pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub backend: BackendKind,
    vision: Box<dyn Session>,
    resampler: Box<dyn Session>,
    media_kv: Option<Box<dyn Session>>,
    decoder: Option<Box<dyn Session>>,
    observer: Option<Observer>,
    /// Bounds on media and requests.
    pub limits: Limits,
    /// Where the time of loading went.
    pub load_times: LoadTimes,
}

/// Where the time of [`Model::load_opts`] went (milliseconds).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LoadTimes {
    /// Reading the manifest and checking the files against it.
    pub verify_ms: f64,
    /// How the files were checked: `sha256` (hashed now), `stamp` (hashed
    /// at an earlier load and unchanged since: same size, inode, mtime and
    /// ctime) or `skipped` (`--no-verify`).
    pub verified_by: String,
    /// Each graph's session (they are created in parallel).
    pub graphs: Vec<GraphLoad>,
    /// Creating every session, wall clock.
    pub sessions_ms: f64,
}

/// One graph's part of [`LoadTimes`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GraphLoad {
    pub role: GraphRole,
    pub ms: f64,
    /// The optimised-graph cache: `hit`, `built`, `off` or `not written: why`.
    pub cache: String,
}

/// Sees every graph run: the graph's role and all its outputs (calibration
/// adds the activations it observes as extra outputs).
pub type Observer = Box<dyn FnMut(GraphRole, &HashMap<String, Value>) + Send>;

/// How an export is loaded.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// GPU provider settings (ignored by the CPU backends).
    pub gpu: crate::gpu::GpuOptions,
    /// Skip the sha256 check of every file (trusted paths; `--no-verify`).
    /// Paths are checked to stay inside the export either way. Unverified
    /// files are never served from the optimised-graph cache.
    pub no_verify: bool,
    /// Neither read nor write the optimised-graph cache
    /// (`DIR/.flamingo-cache/`; `--no-graph-cache`).
    pub no_graph_cache: bool,
}

impl Model {
    /// Loads an export directory on `backend`, its files checked against
    /// the manifest's sha256s.
    pub fn load(dir: &Path, backend: BackendKind) -> Result<Model> {
        Self::load_opts(dir, backend, &LoadOptions::default())
    }

    /// Loads an export with GPU provider settings (ignored by CPU backends).
    pub fn load_with_gpu(
        dir: &Path,
        backend: BackendKind,
        gpu: &crate::gpu::GpuOptions,
    ) -> Result<Model> {
        let opts = LoadOptions {
            gpu: gpu.clone(),
            ..Default::default()
        };
        Self::load_opts(dir, backend, &opts)
    }

    /// Loads an export with `opts`.
    pub fn load_opts(dir: &Path, backend: BackendKind, opts: &LoadOptions) -> Result<Model> {
        let t0 = std::time::Instant::now();
        let manifest = Manifest::load(dir)?;
        let verified_by = crate::verify::check(dir, &manifest, !opts.no_verify)?;
        let verify_ms = ms(t0);
        let be = backend.create_for(Some(&manifest), &opts.gpu)?;
        let cache = (verified_by != crate::verify::Verified::Skipped && !opts.no_graph_cache)
            .then(|| dir.join(crate::verify::CACHE_DIR));
        let mut model = Self::load_with(dir, manifest, be.as_ref(), backend, cache.as_deref())?;
        model.load_times.verify_ms = verify_ms;
        model.load_times.verified_by = verified_by.to_string();
        Ok(model)
    }

    fn load_with(
        dir: &Path,
        manifest: Manifest,
        be: &dyn Backend,
        kind: BackendKind,
        cache: Option<&Path>,
    ) -> Result<Model> {
        let path = |role: GraphRole| -> Result<PathBuf> {
            let g = manifest.graph(role)?;
            if let (Some(req), BackendKind::Tract) = (&g.requires, kind) {
                return Err(Error::Input(format!(
                    "{}: the `{role}` graph ({}) needs {req} (it uses ONNX Runtime contrib operators such as \
                     MatMulNBits, or this runtime's ai.flamingo kernels); run it with --backend ort-cpu",
                    dir.display(),
                    manifest.precision
                )));
            }
            let p = crate::verify::inside(dir, &g.file)?;
            crate::verify::graph_io(&p, role, g)?;
            Ok(p)
        };
        // the graphs' sessions are built on threads of their own, which
        // overlaps one's reading and optimising with another's
        let roles = [
            GraphRole::VisionEncoder,
            GraphRole::Resampler,
            GraphRole::MediaKv,
            GraphRole::Decoder,
        ];
        let paths = roles.map(path).into_iter().collect::<Result<Vec<_>>>()?;
        let keys: Vec<Option<GraphKey>> = roles
            .iter()
            .map(|&role| {
                let g = manifest.graph(role).ok()?;
                let sha = |f: &String| manifest.files.get(f).cloned();
                Some(GraphKey {
                    dir: cache?.to_path_buf(),
                    role,
                    sha256: sha(&g.file)?,
                    data_sha256: match &g.data_file {
                        Some(f) => Some(sha(f)?),
                        None => None,
                    },
                })
            })
            .collect();
        let t0 = std::time::Instant::now();
        type Loaded = (Box<dyn Session>, CacheUse, f64);
        let loaded: Vec<Result<Loaded>> = std::thread::scope(|sc| {
            let handles: Vec<_> = paths
                .iter()
                .zip(&keys)
                .map(|(p, key)| {
                    sc.spawn(move || -> Result<Loaded> {
                        let t = std::time::Instant::now();
                        let (s, cache) = be.load_cached(p, key.as_ref())?;
                        Ok((s, cache, ms(t)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Input("a thread loading a graph failed".into()))
                    })
                })
                .collect()
        });
        let sessions_ms = ms(t0);
        let mut graphs = Vec::new();
        let mut sessions = Vec::new();
        for (role, r) in roles.into_iter().zip(loaded) {
            let (s, cache, ms) = r?;
            graphs.push(GraphLoad {
                role,
                ms,
                cache: cache.to_string(),
            });
            sessions.push(s);
        }
        let [vision, resampler, media_kv, decoder]: [Box<dyn Session>; 4] = sessions
            .try_into()
            .map_err(|_| Error::Input("a graph failed to load".into()))?;
        Ok(Model {
            dir: dir.to_path_buf(),
            manifest,
            backend: kind,
            vision,
            resampler,
            media_kv: Some(media_kv),
            decoder: Some(decoder),
            observer: None,
            limits: Limits::default(),
            load_times: LoadTimes {
                graphs,
                sessions_ms,
                ..Default::default()
            },
        })
    }

    /// Which provider runs each graph.
    pub fn providers(&self) -> Vec<(GraphRole, String)> {
        let mut v = vec![
            (GraphRole::VisionEncoder, self.vision.provider()),
            (GraphRole::Resampler, self.resampler.provider()),
        ];
        if let Some(s) = &self.media_kv {
            v.push((GraphRole::MediaKv, s.provider()));
        }
        if let Some(s) = &self.decoder {
            v.push((GraphRole::Decoder, s.provider()));
        }
        v
    }

    /// Installs (or removes) the observer of graph outputs.
    pub fn set_observer(&mut self, observer: Option<Observer>) {
        self.observer = observer;
    }

    /// Runs the graph `role` and shows its outputs to the observer.
    pub(crate) fn run_graph(
        &mut self,
        role: GraphRole,
        inputs: Vec<(&str, ValueRef<'_>)>,
    ) -> Result<HashMap<String, Value>> {
        let out = self.session(role)?.run(inputs)?;
        if let Some(obs) = self.observer.as_mut() {
            obs(role, &out);
        }
        Ok(out)
    }

    fn session(&mut self, role: GraphRole) -> Result<&mut Box<dyn crate::backend::Session>> {
        match role {
            GraphRole::VisionEncoder => Some(&mut self.vision),
            GraphRole::Resampler => Some(&mut self.resampler),
            GraphRole::MediaKv => self.media_kv.as_mut(),
            GraphRole::Decoder => self.decoder.as_mut(),
        }
        .ok_or_else(|| Error::Input(format!("this export has no {role} graph")))
    }

    /// Whether graph `role` runs with I/O binding (values kept by the backend).
    pub(crate) fn binds_io(&mut self, role: GraphRole) -> bool {
        self.session(role).map(|s| s.binds_io()).unwrap_or(false)
    }

    pub(crate) fn updates_in_place(&mut self, role: GraphRole) -> bool {
        self.session(role)
            .map(|s| s.updates_in_place())
            .unwrap_or(false)
    }

    /// [`Self::run_graph_io`], the outputs in `into` written in place.
    pub(crate) fn run_graph_io_into(
        &mut self,
        role: GraphRole,
        inputs: Vec<(&str, crate::backend::Input<'_>)>,
        into: &[(&str, &crate::backend::Resident)],
    ) -> Result<crate::backend::IoOutputs> {
        let out = self.session(role)?.run_io_into(inputs, &|_| false, into)?;
        if let Some(obs) = self.observer.as_mut() {
            obs(role, &out.0);
        }
        Ok(out)
    }

    /// A copy of `v` the backend running `role` may write in place.
    pub(crate) fn buffer(
        &mut self,
        role: GraphRole,
        v: &Value,
    ) -> Result<crate::backend::Resident> {
        self.session(role)?.buffer(v)
    }

    /// Hands `v` to the backend running `role`, once.
    pub(crate) fn upload(
        &mut self,
        role: GraphRole,
        v: crate::backend::ValueRef<'_>,
    ) -> Result<crate::backend::Resident> {
        self.session(role)?.upload(v)
    }

    /// [`Self::run_graph`] with I/O binding: the outputs `keep` selects stay
    /// with the backend. The observer sees the host outputs.
    pub(crate) fn run_graph_io(
        &mut self,
        role: GraphRole,
        inputs: Vec<(&str, crate::backend::Input<'_>)>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<crate::backend::IoOutputs> {
        let out = self.session(role)?.run_io(inputs, keep)?;
        if let Some(obs) = self.observer.as_mut() {
            obs(role, &out.0);
        }
        Ok(out)
    }

    /// Preprocessed pixels `[N, 3, S, S]` of the given image files.
    pub fn pixels(&self, paths: &[PathBuf]) -> Result<Array4<f32>> {
        let s = self.manifest.preprocess.image_size;
        let mut out = Array4::<f32>::zeros((paths.len(), 3, s, s));
        for (i, p) in paths.iter().enumerate() {
            let img = load_image_within(p, &self.limits)?;
            out.index_axis_mut(Axis(0), i)
                .assign(&preprocess(&img, &self.manifest.preprocess));
        }
        Ok(out)
    }

    /// `vision_encoder`: pixels `[N,3,S,S]` -> tokens `[N,P,D]`.
    pub fn vision_tokens(&mut self, pixels: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let s = self.manifest.preprocess.image_size;
        if pixels.ndim() != 4 || pixels.shape()[1..] != [3, s, s] {
            return Err(Error::Input(format!(
                "pixel_values must be [N, 3, {s}, {s}], got {:?}",
                pixels.shape()
            )));
        }
        let mut out = self.run_graph(
            GraphRole::VisionEncoder,
            vec![(io::PIXEL_VALUES, ValueRef::F32(pixels.view()))],
        )?;
        take(&mut out, io::VISION_TOKENS)
    }

    /// `resampler`: tokens `[B,T,F,P,D]` -> latents `[B,T,n,D]`.
    pub fn latents(&mut self, tokens: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let m = &self.manifest.model;
        if tokens.ndim() != 5 || tokens.shape()[3..] != [m.vision.num_tokens, m.resampler.dim] {
            return Err(Error::Input(format!(
                "vision_tokens must be [B, T, F, {}, {}], got {:?}",
                m.vision.num_tokens,
                m.resampler.dim,
                tokens.shape()
            )));
        }
        let (t, f) = (tokens.shape()[1], tokens.shape()[2]);
        if let Some(max) = m.resampler.max_num_frames {
            if f > max {
                return Err(Error::Input(format!(
                    "{f} frames per media item; this model takes at most {max}"
                )));
            }
        }
        if let Some(max) = m.resampler.max_num_media {
            if t > max {
                return Err(Error::Input(format!(
                    "{t} media items; this model takes at most {max}"
                )));
            }
        }
        let mut out = self.run_graph(
            GraphRole::Resampler,
            vec![(io::VISION_TOKENS, ValueRef::F32(tokens.view()))],
        )?;
        take(&mut out, io::LATENTS)
    }

    /// Encodes one prompt's media: all items must have the same frame count
    /// (they are resampled together as `[1, T, F, P, D]`, as the reference does).
    pub fn encode(&mut self, media: &[Media]) -> Result<Encoded> {
        if media.is_empty() {
            return Err(Error::Input("no media given".into()));
        }
        if media.len() > self.limits.max_media {
            return Err(Error::Input(format!(
                "{} media items, more than --max-media {}",
                media.len(),
                self.limits.max_media
            )));
        }
        let f = media[0].frames().len();
        if let Some(m) = media.iter().find(|m| m.frames().len() != f) {
            return Err(Error::Input(format!(
                "all media of one prompt must have the same number of frames (got {f} and {})",
                m.frames().len()
            )));
        }
        if f == 0 {
            return Err(Error::Input("a video with no frames".into()));
        }
        let frames: Vec<PathBuf> = media.iter().flat_map(|m| m.frames().to_vec()).collect();
        let px = self.pixels(&frames)?;
        let tokens = self.vision_tokens(px.into_dyn())?;
        let (p, d) = (tokens.shape()[1], tokens.shape()[2]);
        let grouped = tokens
            .clone()
            .into_shape_with_order(vec![1, media.len(), f, p, d])
            .map_err(|e| Error::Input(e.to_string()))?;
        let latents = self.latents(grouped)?;
        Ok(Encoded {
            vision_tokens: tokens,
            latents,
        })
    }
}

fn take(out: &mut HashMap<String, Value>, name: &str) -> Result<ArrayD<f32>> {
    out.remove(name)
        .ok_or_else(|| Error::Input(format!("the graph did not return `{name}`")))?
        .into_f32(name)
}

fn ms(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
