//! A loaded export: manifest, one session per graph, and the media pipeline
//! (preprocess -> vision encoder -> resampler).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flamingo_contract::{io, GraphRole, Manifest};
use ndarray::{Array4, ArrayD, Axis};

use crate::backend::{Backend, BackendKind, Session, Value, ValueRef};
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
    /// Paths are checked to stay inside the export either way.
    pub no_verify: bool,
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
        let manifest = Manifest::load(dir)?;
        crate::verify::check(dir, &manifest, !opts.no_verify)?;
        let be = backend.create_for(Some(&manifest), &opts.gpu)?;
        Self::load_with(dir, manifest, be.as_ref(), backend)
    }

    fn load_with(
        dir: &Path,
        manifest: Manifest,
        be: &dyn Backend,
        kind: BackendKind,
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
        let vision = be.load(&path(GraphRole::VisionEncoder)?)?;
        let resampler = be.load(&path(GraphRole::Resampler)?)?;
        let media_kv = be.load(&path(GraphRole::MediaKv)?)?;
        let decoder = be.load(&path(GraphRole::Decoder)?)?;
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
        v: &Value,
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
