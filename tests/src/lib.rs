//! Shared helpers for the golden tests: fixture paths, one export per fixture
//! per test process, reference tensors, the backends every test runs on,
//! the precision [`Variant`]s, the tolerances of each ([`tolerance`]) and
//! the macros that make one test per backend or variant and fixture
//! ([`golden!`], [`per_variant!`]).

pub mod golden;
pub mod tolerance;
pub mod variant;

pub use variant::Variant;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use flamingo_export::{ExportOptions, NoProgress, TensorStore};
use flamingo_runtime::BackendKind;

/// Every fixture (copied from `../shared/fixtures` into `tests/fixtures`).
pub const FIXTURES: [&str; 5] = [
    "tiny-mpt",
    "tiny-neox",
    "tiny-llama",
    "tiny-llama-video",
    "tiny-mosaic",
];

/// The backends CI can run; every golden test runs on each of them.
pub const BACKENDS: [BackendKind; 2] = [BackendKind::Tract, BackendKind::OrtCpu];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `flamingo.json` of a fixture.
pub fn flamingo_json(name: &str) -> Result<serde_json::Value> {
    let p = fixture(name).join("flamingo.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(&p)?)?)
}

/// `cases.json` of a fixture.
pub fn cases(name: &str) -> Result<serde_json::Value> {
    let p = fixture(name).join("cases.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(&p)?)?)
}

/// The case called `name` in a fixture's `cases.json`.
pub fn named_case(fixture: &str, name: &str) -> Result<serde_json::Value> {
    cases(fixture)?["cases"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .cloned()
        .with_context(|| format!("{fixture}: no `{name}` case"))
}

/// Export options for a fixture into `out`: its files as `flamingo.json`'s
/// `files` names them (the releases' layout), else the tidy layout with the
/// tokenizer and the cross-attention interval given.
pub fn export_options(name: &str, out: &Path) -> Result<ExportOptions> {
    let f = fixture(name);
    let j = flamingo_json(name)?;
    if let Some(files) = j.get("files") {
        let file = |k: &str| -> Result<PathBuf> {
            Ok(f.join(files[k].as_str().with_context(|| format!("files.{k}"))?))
        };
        return Ok(ExportOptions {
            clip: file("clip")?,
            vision_preset: None,
            lm: file("lm")?,
            checkpoint: file("checkpoint")?,
            tokenizer: None,
            cross_attn_every_n_layers: None,
            out: out.to_path_buf(),
            force: false,
            release: None,
            rewrite: None,
            ..Default::default()
        });
    }
    let n = j["cross_attn_every_n_layers"]
        .as_u64()
        .context("cross_attn_every_n_layers")? as usize;
    Ok(ExportOptions {
        clip: f.join("clip/open_clip_pytorch_model.bin"),
        vision_preset: None,
        lm: f.join("lm"),
        checkpoint: f.join("checkpoint.pt"),
        tokenizer: Some(f.join("tokenizer")),
        cross_attn_every_n_layers: Some(n),
        out: out.to_path_buf(),
        force: false,
        release: None,
        rewrite: None,
        ..Default::default()
    })
}

/// A case's `input_ids`.
pub fn case_ids(case: &serde_json::Value) -> Result<Vec<i64>> {
    Ok(case["input_ids"]
        .as_array()
        .context("input_ids")?
        .iter()
        .filter_map(|v| v.as_i64())
        .collect())
}

/// Full-prompt logits of `ids` over `media` (encoded from their files),
/// one pass over an empty cache.
pub fn prompt_logits(
    model: &mut flamingo_runtime::Model,
    media: &[flamingo_runtime::Media],
    ids: &[i64],
) -> Result<ndarray::ArrayD<f32>> {
    use flamingo_runtime::decoder::{media_time, position_ids};
    let enc = model.encode(media)?;
    let kv = model.media_kv(enc.latents)?;
    let n = ids.len();
    let row = |v: Vec<i64>| ndarray::Array2::from_shape_vec((1, n), v);
    let media_token = model.manifest.special_tokens.media as i64;
    let step = flamingo_runtime::Step {
        input_ids: row(ids.to_vec())?,
        attention_mask: row(vec![1; n])?,
        position_ids: row(position_ids(&vec![1; n]))?,
        media_time: row(media_time(ids, media_token))?,
        keep: n,
    };
    let mut cache = model.empty_cache(1);
    Ok(model.decode(&step, &kv, &mut cache)?)
}

/// Full-prompt logits of every case with reference logits, from the PNGs.
pub fn case_logits(
    model: &mut flamingo_runtime::Model,
    fx: &str,
) -> Result<Vec<(String, ndarray::ArrayD<f32>)>> {
    let mut out = Vec::new();
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        if case["expect"]["logits"].as_str().is_none() {
            continue;
        }
        let frames: Vec<usize> = match case.get("frames") {
            Some(f) => indices(f),
            None => indices(&case["images"]),
        };
        let paths: Vec<_> = frames
            .iter()
            .map(|i| fixture(fx).join(format!("images/img{i}.png")))
            .collect();
        let media: Vec<flamingo_runtime::Media> = if case.get("frames").is_some() {
            vec![flamingo_runtime::Media::Video(paths)]
        } else {
            paths
                .into_iter()
                .map(flamingo_runtime::Media::Image)
                .collect()
        };
        let ids = case_ids(case)?;
        out.push((
            case["name"].as_str().unwrap_or("").to_string(),
            prompt_logits(model, &media, &ids)?,
        ));
    }
    Ok(out)
}

/// A private, mutable copy of a fixture in the scratch directory.
pub fn copy_fixture(name: &str, tag: &str) -> Result<PathBuf> {
    let dst = scratch().join(format!("copy-{name}-{tag}"));
    copy_dir(&fixture(name), &dst)?;
    Ok(dst)
}

pub fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}

static TMP: OnceLock<tempfile::TempDir> = OnceLock::new();
static EXPORTS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();

/// A scratch directory living as long as the test process.
pub fn scratch() -> &'static Path {
    TMP.get_or_init(|| tempfile::tempdir().expect("creating a temp dir"))
        .path()
}

/// The fixture exported once per test process (fp32).
pub fn exported(name: &str) -> Result<PathBuf> {
    let map = EXPORTS.get_or_init(Default::default);
    let mut map = map
        .lock()
        .map_err(|_| anyhow::anyhow!("export lock poisoned"))?;
    if let Some(p) = map.get(name) {
        return Ok(p.clone());
    }
    let out = scratch().join(format!("export-{name}"));
    flamingo_export::export(&export_options(name, &out)?, &mut NoProgress)
        .with_context(|| format!("exporting {name}"))?;
    map.insert(name.to_string(), out.clone());
    Ok(out)
}

/// The reference tensors of a fixture (`expected.safetensors`).
pub struct Expected(TensorStore);

impl Expected {
    pub fn load(name: &str) -> Result<Expected> {
        let mut s = TensorStore::new();
        s.add_file(&fixture(name).join("expected.safetensors"), "", |_| true)?;
        Ok(Expected(s))
    }

    /// Shape and values of `key`.
    pub fn get(&self, key: &str) -> Result<ndarray::ArrayD<f32>> {
        let shape = self
            .0
            .shape(key)
            .with_context(|| format!("no `{key}` in expected"))?
            .to_vec();
        let v = self.0.to_f32(key)?;
        Ok(ndarray::ArrayD::from_shape_vec(shape, v)?)
    }
}

/// Max |a - b|, failing on a shape mismatch.
pub fn max_abs_diff(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> Result<f32> {
    anyhow::ensure!(
        a.shape() == b.shape(),
        "shape {:?} != {:?}",
        a.shape(),
        b.shape()
    );
    let d = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    anyhow::ensure!(d.is_finite(), "non-finite difference");
    Ok(d)
}

/// Rows `idx` of the first axis of `a`.
pub fn select(a: &ndarray::ArrayD<f32>, idx: &[usize]) -> ndarray::ArrayD<f32> {
    a.select(ndarray::Axis(0), idx)
}

/// `[usize]` from a JSON array.
pub fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as usize)
                .collect()
        })
        .unwrap_or_default()
}

static CONVERTED: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();

/// The fixture's fp32 export rewritten with `flamingo convert` semantics
/// (`tag` names the rewrite, and its precision where it is one: test-only
/// rewrites of the fp32 graphs, fusions and float stand-ins, stay fp32),
/// once per test process.
pub fn converted(
    name: &str,
    tag: &str,
    rewrite: flamingo_calibration::convert::RoleRewrite,
) -> Result<PathBuf> {
    let precision = serde_json::from_value(serde_json::Value::from(tag)).unwrap_or_default();
    converted_as(name, tag, precision, rewrite)
}

/// [`converted`], recording `precision` in the manifest.
pub fn converted_as(
    name: &str,
    tag: &str,
    precision: flamingo_contract::Precision,
    rewrite: flamingo_calibration::convert::RoleRewrite,
) -> Result<PathBuf> {
    let src = exported(name)?;
    let map = CONVERTED.get_or_init(Default::default);
    let mut map = map
        .lock()
        .map_err(|_| anyhow::anyhow!("convert lock poisoned"))?;
    let key = format!("{name}-{tag}");
    if let Some(p) = map.get(&key) {
        return Ok(p.clone());
    }
    let out = scratch().join(format!("convert-{key}"));
    flamingo_calibration::convert::convert(&src, &out, false, precision, rewrite, &mut NoProgress)
        .with_context(|| format!("converting {name} to {tag}"))?;
    map.insert(key, out.clone());
    Ok(out)
}

/// Cosine similarity of two equally shaped arrays.
pub fn cosine(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> Result<f64> {
    anyhow::ensure!(
        a.shape() == b.shape(),
        "shape {:?} != {:?}",
        a.shape(),
        b.shape()
    );
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b.iter()) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    Ok(ab / (aa.sqrt() * bb.sqrt()).max(1e-30))
}

/// Calibration requests whose text differs from every fixture case (held
/// out: what is measured is not what was calibrated on), over the fixture's
/// images (or, for a video fixture, its frames as one video).
pub fn held_out_requests(name: &str) -> Result<Vec<flamingo_runtime::Request>> {
    use flamingo_runtime::{GenerateOptions, Media, Request};
    let video = cases(name)?["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .any(|c| c.get("frames").is_some());
    let img = |i: usize| fixture(name).join(format!("images/img{}.png", i % 4));
    let texts = [
        "<image>a small boat near the shore.<|endofchunk|><image>a kitchen with",
        "<image>description: three cats asleep on a red sofa in the sun",
        "<image>q: where is the dog? a: under the tree.<|endofchunk|><image>q: what is this? a:",
        "<image>the picture shows a busy street at night with",
        "<image>an old bicycle.<|endofchunk|><image>a bowl of fruit.<|endofchunk|><image>a",
        "<image>title: mountains and a lake. details:",
        "<image>someone is holding a green umbrella while",
        "<image>answer the question. how many people are there? there are",
        "<image>a plate with eggs, toast and coffee on a wooden table",
        "<image>this is a close-up of a yellow flower.<|endofchunk|><image>this is",
        "<image>the train is leaving the station; passengers wave from",
        "<image>Q: Is it raining? A: no.<|endofchunk|><image>Q: What time of day is it? A:",
        "<image>two children play football in the park next to a fountain.",
        "<image>label: zebra<|endofchunk|><image>label: giraffe<|endofchunk|><image>label:",
        "<image>a snowy road with tall pine trees on both sides and a blue car",
        "<image>my favourite photo from the trip: the old harbour at sunset, boats",
        "<image>caption this image in one sentence: a woman reading a newspaper",
        "<image>the laptop on the desk is next to a cup of tea and some books",
        "<image>what breed is this dog? it looks like a",
        "<image>A red kite flies above the beach.<|endofchunk|><image>A white horse",
    ];
    Ok(texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = t.matches("<image>").count();
            let (prompt, media) = if video {
                // one video: one marker
                (
                    format!("<image>{}", t.replace("<image>", "")),
                    vec![Media::Video((0..3).map(|f| img(i + f)).collect())],
                )
            } else {
                (
                    t.to_string(),
                    (0..n).map(|m| Media::Image(img(i + m))).collect(),
                )
            };
            Request {
                prompt,
                media,
                options: GenerateOptions {
                    max_new_tokens: 8,
                    ..Default::default()
                },
            }
        })
        .collect())
}
