//! The export: open a release, build each graph, write everything into a
//! temporary directory beside the output, then rename it into place. A failed
//! export leaves nothing behind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use flamingo_contract::{
    io, manifest, GraphInfo, GraphRole, LmInfo, Manifest, ModelInfo, Precision, PreprocessConfig,
    SpecialTokens,
};
use flamingo_graphs::blocks::decoder::{decoder, media_kv, DecoderConfig, DecoderInputs};
use flamingo_graphs::blocks::{perceiver_resampler, vision_encoder, ResamplerConfig, VisionConfig};
use flamingo_graphs::onnx::{self, WriteOptions};
use flamingo_graphs::{DType, Dim, Graph, GraphBuilder, WeightSource};

use crate::config;
use crate::error::{io_err, Error, Result};
use crate::lm::{self, LmConfig};
use crate::output::{hash_files, OutputDir};
use crate::store::TensorStore;
use crate::tokens;

/// Where the release files are and where the export goes.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// open_clip weights (`open_clip_pytorch_model.bin` or `.safetensors`).
    pub clip: PathBuf,
    /// A named vision tower (`ViT-L-14`, ...) when no `open_clip_config.json`
    /// sits beside the CLIP weights.
    pub vision_preset: Option<String>,
    /// Hugging Face LM directory (`config.json` + weights).
    pub lm: PathBuf,
    /// OpenFlamingo's `checkpoint.pt`.
    pub checkpoint: PathBuf,
    /// Tokenizer directory (`tokenizer.json`); `None`: the LM directory's
    /// own (OpenFlamingo's tokens are added where it lacks them).
    pub tokenizer: Option<PathBuf>,
    /// Gated cross-attention every n layers; `None`: read from which layers
    /// of `checkpoint.pt` hold one (and checked against them when given).
    pub cross_attn_every_n_layers: Option<usize>,
    pub out: PathBuf,
    /// Replace `out` if it exists.
    pub force: bool,
    /// A public release (`openflamingo-3b-vitl-mpt1b`, ...) whose known
    /// shapes and settings the files must have.
    pub release: Option<String>,
    /// Bounds on the checkpoints' pickles.
    pub pickle_limits: crate::pickle::PickleLimits,
    /// A precision rewrite applied to every graph before it is written
    /// (`flamingo_calibration::fp16::to_fp16`), and its name for the manifest.
    pub rewrite: Option<(Precision, Rewrite)>,
}

/// A graph-to-graph rewrite (precision tools).
pub type Rewrite = fn(&Graph) -> std::result::Result<Graph, String>;

/// Receives progress while graphs are written.
pub trait Progress {
    /// A new stage that will write about `total_bytes`.
    fn stage(&mut self, name: &str, total_bytes: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self) {}
}

/// Ignores progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// A release opened for export: all tensors by name, plus the configs.
pub struct Release {
    pub store: TensorStore,
    pub vision: VisionConfig,
    pub preprocess: PreprocessConfig,
    pub resampler: ResamplerConfig,
    pub lm: LmConfig,
    pub decoder: DecoderConfig,
}

impl Release {
    /// Maps the checkpoints. LM tensors are named `lang_encoder.<hf name>`,
    /// so that `checkpoint.pt`'s `lang_encoder.*` entries (the resized input
    /// embeddings, the gated cross-attention layers) override them.
    pub fn open(opts: &ExportOptions) -> Result<Release> {
        if opts.cross_attn_every_n_layers == Some(0) {
            return Err(Error::Config {
                path: "--cross-attn-every-n-layers".into(),
                message: "must be at least 1".into(),
            });
        }
        let lm = LmConfig::load(&opts.lm)?;
        let mut store = TensorStore::new();
        store.pickle_limits = opts.pickle_limits;
        let clip = crate::files::clip_weights(&opts.clip)?;
        let n = store.add_file(&clip, "", |n| n.starts_with("visual."))?;
        if n == 0 {
            return Err(Error::Config {
                path: clip.display().to_string(),
                message: "no `visual.*` tensors (not an open_clip checkpoint?)".into(),
            });
        }
        let weights = lm::weight_files(&opts.lm)?;
        for f in &weights.files {
            match &weights.index {
                Some((index, holds)) => {
                    let expected: Vec<&str> = holds
                        .get(f)
                        .map(|v| v.iter().map(|s| s.as_str()).collect())
                        .unwrap_or_default();
                    store.add_shard(f, "lang_encoder.", index, &expected)?;
                }
                None => {
                    store.add_file(f, "lang_encoder.", |_| true)?;
                }
            }
        }
        let checkpoint = crate::files::checkpoint(&opts.checkpoint)?;
        let n = store.add_file(&checkpoint, "", |n| {
            n.starts_with("perceiver.") || n.starts_with("lang_encoder.")
        })?;
        if n == 0 {
            return Err(Error::Config {
                path: checkpoint.display().to_string(),
                message:
                    "no `perceiver.*` or `lang_encoder.*` tensors (not an OpenFlamingo checkpoint?)"
                        .into(),
            });
        }
        let cfg = clip
            .parent()
            .unwrap_or(Path::new("."))
            .join("open_clip_config.json");
        let (vision, preprocess) = match &opts.vision_preset {
            Some(name) => config::vision_preset(name)?,
            None if cfg.exists() => config::read_open_clip_config(&cfg)?,
            // OpenAI's TorchScript CLIP: the tower from its tensors, QuickGELU
            None if crate::files::is_torchscript(&clip)? => {
                let v = config::infer_vision(&store)?;
                let p = flamingo_contract::PreprocessConfig::clip(v.image_size);
                (v, p)
            }
            None => {
                return Err(Error::Config {
                    path: cfg.display().to_string(),
                    message: "not found; pass --vision-preset (e.g. ViT-L-14)".into(),
                })
            }
        };
        config::check_vision(&store, &vision)?;
        let resampler = config::resampler_config(&store)?;
        if resampler.dim != vision.width {
            return Err(Error::Graph(flamingo_graphs::Error::ShapeMismatch {
                name: "perceiver.latents".into(),
                expected: vec![resampler.num_latents, vision.width],
                got: vec![resampler.num_latents, resampler.dim],
            }));
        }
        let every_n = match opts.cross_attn_every_n_layers {
            Some(n) => n,
            None => crate::family::every_n_from_checkpoint(&lm, &store, &checkpoint)?,
        };
        let decoder = crate::family::decoder_config(&lm, Some(&store), &resampler, every_n)?;
        Ok(Release {
            store,
            vision,
            preprocess,
            resampler,
            lm,
            decoder,
        })
    }
}

/// `vision_encoder`: `pixel_values [num_images,3,H,W]` -> `vision_tokens [num_images,P,D]`.
pub fn build_vision_graph(w: &dyn WeightSource, cfg: &VisionConfig) -> Result<Graph> {
    let mut g = GraphBuilder::new("vision_encoder");
    g.set_doc("open_clip ViT: per-patch tokens without CLS and without ln_post");
    let n = Dim::sym("num_images");
    let hw = cfg.image_size;
    let px = g.input(
        io::PIXEL_VALUES,
        DType::F32,
        vec![n.clone(), 3.into(), hw.into(), hw.into()],
    );
    let tokens = vision_encoder(&mut g.scope(w, "visual"), cfg, px)?;
    g.output(
        tokens,
        io::VISION_TOKENS,
        DType::F32,
        vec![n, cfg.num_patches().into(), cfg.width.into()],
    );
    Ok(g.finish()?)
}

/// `resampler`: `vision_tokens [batch,num_media,num_frames,P,D]` -> `latents [batch,num_media,n,D]`.
pub fn build_resampler_graph(
    w: &dyn WeightSource,
    cfg: &ResamplerConfig,
    num_tokens: usize,
) -> Result<Graph> {
    let mut g = GraphBuilder::new("resampler");
    g.set_doc("OpenFlamingo PerceiverResampler");
    let (b, t) = (Dim::sym("batch"), Dim::sym("num_media"));
    let x = g.input(
        io::VISION_TOKENS,
        DType::F32,
        vec![
            b.clone(),
            t.clone(),
            Dim::sym("num_frames"),
            num_tokens.into(),
            cfg.dim.into(),
        ],
    );
    let lat = perceiver_resampler(&mut g.scope(w, "perceiver"), cfg, x)?;
    g.output(
        lat,
        io::LATENTS,
        DType::F32,
        vec![b, t, cfg.num_latents.into(), cfg.dim.into()],
    );
    Ok(g.finish()?)
}

/// `media_kv`: `latents [batch,num_media,n,Dv]` -> `media_kv.{i}.key/value
/// [batch,heads,num_media*n,dim_head]` for each gated layer i: the
/// visual-latent cache, computed once per prompt.
pub fn build_media_kv_graph(w: &dyn WeightSource, cfg: &DecoderConfig) -> Result<Graph> {
    let mut g = GraphBuilder::new("media_kv");
    g.set_doc("Cross-attention K/V of every gated layer, from the resampler latents");
    let (b, t) = (Dim::sym("batch"), Dim::sym("num_media"));
    let x = &cfg.xattn;
    let lat = g.input(
        io::LATENTS,
        DType::F32,
        vec![b.clone(), t, x.num_latents.into(), x.dim_visual.into()],
    );
    let kvs = media_kv(&mut g.scope(w, ""), cfg, lat)?;
    for (i, k, v) in kvs {
        let dims = vec![
            b.clone(),
            x.heads.into(),
            Dim::sym("media_latents"),
            x.dim_head.into(),
        ];
        g.output(k, &io::media_key(i), DType::F32, dims.clone());
        g.output(v, &io::media_value(i), DType::F32, dims);
    }
    Ok(g.finish()?)
}

/// `decoder`: one step (prefill or decode) of the cross-attention-augmented
/// LM with the self-attention KV cache; see [`io`] for the contract.
pub fn build_decoder_graph(w: &dyn WeightSource, cfg: &DecoderConfig) -> Result<Graph> {
    let mut g = GraphBuilder::new("decoder");
    g.set_doc(
        "OpenFlamingo language model with gated cross-attention, KV cache and media K/V cache",
    );
    let (b, s) = (Dim::sym("batch"), Dim::sym("seq"));
    let i64d = DType::I64;
    let input_ids = g.input(io::INPUT_IDS, i64d, vec![b.clone(), s.clone()]);
    let attention_mask = g.input(
        io::ATTENTION_MASK,
        i64d,
        vec![b.clone(), Dim::sym("total_seq")],
    );
    let position_ids = cfg
        .uses_position_ids()
        .then(|| g.input(io::POSITION_IDS, i64d, vec![b.clone(), s.clone()]));
    let media_time = g.input(io::MEDIA_TIME, i64d, vec![b.clone(), s.clone()]);
    let keep = g.input(io::NUM_LOGITS_TO_KEEP, i64d, vec![1.into()]);
    let kv_dims = |len: &str| {
        vec![
            b.clone(),
            cfg.kv_heads.into(),
            Dim::sym(len),
            cfg.head_dim.into(),
        ]
    };
    let past = (0..cfg.num_layers)
        .map(|i| {
            (
                g.input(&io::past_key(i), DType::F32, kv_dims("past_seq")),
                g.input(&io::past_value(i), DType::F32, kv_dims("past_seq")),
            )
        })
        .collect();
    let x = &cfg.xattn;
    let media = (0..cfg.num_layers)
        .map(|i| {
            x.gated(i).then(|| {
                let dims = vec![
                    b.clone(),
                    x.heads.into(),
                    Dim::sym("media_latents"),
                    x.dim_head.into(),
                ];
                (
                    g.input(&io::media_key(i), DType::F32, dims.clone()),
                    g.input(&io::media_value(i), DType::F32, dims),
                )
            })
        })
        .collect();
    let inputs = DecoderInputs {
        input_ids,
        attention_mask,
        position_ids,
        media_time,
        num_logits_to_keep: keep,
        past,
        media,
    };
    let out = decoder(&mut g.scope(w, ""), cfg, &inputs)?;
    g.output(
        out.logits,
        io::LOGITS,
        DType::F32,
        vec![b.clone(), Dim::sym("kept"), cfg.vocab.into()],
    );
    for (i, (k, v)) in out.present.into_iter().enumerate() {
        g.output(k, &io::present_key(i), DType::F32, kv_dims("total_seq"));
        g.output(v, &io::present_value(i), DType::F32, kv_dims("total_seq"));
    }
    Ok(g.finish()?)
}

/// Exports the preset `name` with random weights into `out` (streamed:
/// each tensor is generated while it is written).
pub fn export_preset(
    name: &str,
    out: &Path,
    force: bool,
    rewrite: Option<(Precision, Rewrite)>,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let p = crate::presets::preset(name)?;
    let output = OutputDir::create(out, force, &[])?;
    let spec = Spec {
        weights: &crate::presets::RandomWeights,
        vision: p.vision.clone(),
        preprocess: p.preprocess(),
        resampler: p.resampler.clone(),
        decoder: p.decoder.clone(),
        family: p.lm.model_type.clone(),
        lm: lm_info(&p.lm, &p.decoder),
        special: p.special.clone(),
        tokenizer: None,
        tokenizer_files: vec![("tokenizer.json", crate::presets::tokenizer_json(&p.special))],
        rewrite,
    };
    let m = write_spec(&spec, output.path(), progress)?;
    output.commit()?;
    progress.finish();
    Ok(m)
}

/// The manifest's record of the LM.
fn lm_info(lm: &LmConfig, d: &DecoderConfig) -> LmInfo {
    LmInfo {
        model_type: lm.model_type.clone(),
        vocab_size: d.vocab,
        hidden_size: lm.hidden_size(),
        num_layers: lm.num_layers(),
        max_position_embeddings: lm.max_positions(),
        pad_token_id: lm.tokens.pad_token_id,
    }
}

/// Exports a release into `opts.out`. Nothing is left at `opts.out` unless
/// the whole export succeeded.
pub fn export(opts: &ExportOptions, progress: &mut dyn Progress) -> Result<Manifest> {
    // refused before any work
    let inputs = [
        opts.clip.as_path(),
        opts.lm.as_path(),
        opts.checkpoint.as_path(),
        opts.tokenizer.as_deref().unwrap_or(opts.lm.as_path()),
    ];
    crate::output::check_replaceable(&opts.out, opts.force, &inputs)?;
    let release = Release::open(opts)?;
    if let Some(name) = &opts.release {
        crate::releases::check(name, &release, opts)?;
    }
    let tok_dir = opts.tokenizer.clone().unwrap_or_else(|| opts.lm.clone());
    let tok = tokens::prepare(&tok_dir, &release.lm)?;
    // open_flamingo resizes the embeddings to `len(tokenizer)`
    if release.decoder.vocab != tok.len {
        return Err(Error::Config {
            path: opts.checkpoint.display().to_string(),
            message: format!(
                "the embedding `{}` has {} rows but the tokenizer {} has {} tokens{}",
                release.decoder.embed,
                release.decoder.vocab,
                tok_dir.join("tokenizer.json").display(),
                tok.len,
                if tok.added.is_empty() {
                    String::new()
                } else {
                    format!(" (after adding {})", tok.added.join(", "))
                }
            ),
        });
    }
    let special = tok.special.clone();
    let inputs = [
        opts.clip.as_path(),
        opts.lm.as_path(),
        opts.checkpoint.as_path(),
        opts.tokenizer.as_deref().unwrap_or(opts.lm.as_path()),
    ];
    let output = OutputDir::create(&opts.out, opts.force, &inputs)?;
    let spec = Spec {
        weights: &release.store,
        vision: release.vision.clone(),
        preprocess: release.preprocess.clone(),
        resampler: release.resampler.clone(),
        decoder: release.decoder.clone(),
        family: release.lm.model_type.clone(),
        lm: lm_info(&release.lm, &release.decoder),
        special,
        tokenizer: Some(tok_dir.clone()),
        tokenizer_files: [
            ("tokenizer.json", tok.tokenizer_json),
            ("special_tokens_map.json", tok.special_tokens_map),
        ]
        .into_iter()
        .filter_map(|(n, t)| Some((n, t?)))
        .collect(),
        rewrite: opts.rewrite,
    };
    let m = write_spec(&spec, output.path(), progress)?;
    output.commit()?;
    progress.finish();
    Ok(m)
}

/// Everything an export writes, whatever the weights come from.
pub struct Spec<'a> {
    pub weights: &'a dyn WeightSource,
    pub vision: VisionConfig,
    pub preprocess: PreprocessConfig,
    pub resampler: ResamplerConfig,
    pub decoder: DecoderConfig,
    pub family: String,
    pub lm: LmInfo,
    pub special: SpecialTokens,
    /// A tokenizer directory to copy in, if any.
    pub tokenizer: Option<PathBuf>,
    /// Tokenizer files written instead of copied: (file name, text).
    pub tokenizer_files: Vec<(&'static str, String)>,
    pub rewrite: Option<(Precision, Rewrite)>,
}

/// Writes the graphs, tokenizer and manifest of `spec` into `dir`.
pub fn write_spec(spec: &Spec, dir: &Path, progress: &mut dyn Progress) -> Result<Manifest> {
    let w = spec.weights;
    let graphs = vec![
        (
            GraphRole::VisionEncoder,
            build_vision_graph(w, &spec.vision)?,
        ),
        (
            GraphRole::Resampler,
            build_resampler_graph(w, &spec.resampler, spec.vision.num_patches())?,
        ),
        (GraphRole::MediaKv, build_media_kv_graph(w, &spec.decoder)?),
        (GraphRole::Decoder, build_decoder_graph(w, &spec.decoder)?),
    ];
    let graphs = match &spec.rewrite {
        None => graphs,
        Some((name, f)) => graphs
            .into_iter()
            .map(|(role, g)| {
                f(&g).map(|g| (role, g)).map_err(|message| Error::Config {
                    path: format!("{role} graph"),
                    message: format!("{name} rewrite failed: {message}"),
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let mut infos = BTreeMap::new();
    for (role, g) in &graphs {
        progress.stage(role.as_str(), g.weight_bytes() as u64);
        let file = role.file_name();
        let written = onnx::write(g, dir, &file, &WriteOptions::default(), &mut |n| {
            progress.advance(n)
        })?;
        infos.insert(
            *role,
            GraphInfo {
                file,
                requires: None,
                kv_update: None,
                data_file: written
                    .data
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
                inputs: g.inputs.iter().map(Into::into).collect(),
                outputs: g.outputs.iter().map(Into::into).collect(),
                doc: g.doc.clone(),
            },
        );
    }
    let tok_dir = dir.join("tokenizer");
    fs::create_dir_all(&tok_dir).map_err(io_err(&tok_dir))?;
    for (name, text) in &spec.tokenizer_files {
        let p = tok_dir.join(name);
        fs::write(&p, text).map_err(io_err(&p))?;
    }
    for f in tokens::TOKENIZER_FILES {
        let Some(src) = spec.tokenizer.as_ref().map(|t| t.join(f)) else {
            break;
        };
        if spec.tokenizer_files.iter().any(|(n, _)| n == f) {
            continue;
        }
        if src.exists() {
            let dst = tok_dir.join(f);
            fs::copy(&src, &dst).map_err(io_err(&src))?;
        }
    }
    let mut m = Manifest {
        format_version: manifest::FORMAT_VERSION,
        producer: format!("flamingo {}", env!("CARGO_PKG_VERSION")),
        precision: spec.rewrite.as_ref().map(|r| r.0).unwrap_or_default(),
        model: ModelInfo {
            family: spec.family.clone(),
            cross_attn_every_n_layers: spec.decoder.xattn.every_n,
            vision: (&spec.vision).into(),
            resampler: (&spec.resampler).into(),
            decoder: (&spec.decoder).into(),
            lm: spec.lm.clone(),
        },
        preprocess: spec.preprocess.clone(),
        special_tokens: spec.special.clone(),
        graphs: infos,
        files: BTreeMap::new(),
    };
    m.files = hash_files(dir, dir)?;
    let path = dir.join(manifest::FILE_NAME);
    fs::write(&path, m.to_json()).map_err(io_err(&path))?;
    Ok(m)
}
