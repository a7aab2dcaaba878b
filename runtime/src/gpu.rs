//! GPU execution settings for ONNX Runtime's CUDA and TensorRT providers:
//! device, memory limit, TensorRT precision flags and calibration table,
//! engine/timing cache directories, and optimisation profiles (min/opt/max
//! shapes per graph input) derived from the manifest. Pure logic, so it
//! builds and is tested on machines without a GPU; the providers are
//! registered in `ort_backend` behind the `cuda` / `tensorrt` features.

use std::path::{Path, PathBuf};

use flamingo_contract::{GraphInfo, Manifest};

/// Settings of the GPU backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuOptions {
    pub device_id: i32,
    /// Bytes the CUDA arena may use (`gpu_mem_limit`).
    pub memory_limit: Option<usize>,
    pub trt_fp16: bool,
    pub trt_int8: bool,
    /// `flamingo calibrate`'s `calibration/<graph>.ort-trt.flatbuffers`
    /// directory (the table of each graph is picked by name).
    pub calibration_dir: Option<PathBuf>,
    /// Where TensorRT engines and timing caches are kept.
    pub cache_dir: Option<PathBuf>,
    pub limits: ProfileLimits,
}

/// The ranges optimisation profiles cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileLimits {
    pub max_batch: usize,
    pub opt_batch: usize,
    /// Longest prompt chunk fed at once.
    pub max_seq: usize,
    /// Longest context (past + new).
    pub max_context: usize,
    pub max_media: usize,
    pub max_frames: usize,
}

impl Default for ProfileLimits {
    fn default() -> Self {
        ProfileLimits {
            max_batch: 8,
            opt_batch: 1,
            max_seq: 512,
            max_context: 2048,
            max_media: 8,
            max_frames: 1,
        }
    }
}

/// Min / opt / max shapes of each dynamic input of a graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    pub min: Vec<(String, Vec<usize>)>,
    pub opt: Vec<(String, Vec<usize>)>,
    pub max: Vec<(String, Vec<usize>)>,
}

impl Profile {
    /// TensorRT provider syntax: `name:1x3x224x224,other:1x1`.
    pub fn shapes(list: &[(String, Vec<usize>)]) -> String {
        list.iter()
            .map(|(n, d)| {
                format!(
                    "{n}:{}",
                    d.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("x")
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The three values a symbolic dimension takes in the profile.
fn dim_range(sym: &str, m: &Manifest, l: &ProfileLimits) -> (usize, usize, usize) {
    let n = m.model.resampler.num_latents;
    match sym {
        "batch" | "num_images" => (1, l.opt_batch, l.max_batch),
        "seq" | "kept" => (1, 1, l.max_seq),
        "past_seq" => (0, l.max_context / 2, l.max_context),
        "total_seq" => (1, l.max_context / 2, l.max_context),
        "num_media" => (1, 1, l.max_media),
        "num_frames" => (1, 1, l.max_frames),
        "media_latents" => (n, n, n * l.max_media),
        _ => (1, 1, 1),
    }
}

/// The profile of one graph from its manifest entry.
pub fn profile(m: &Manifest, g: &GraphInfo, l: &ProfileLimits) -> Profile {
    let mut p = Profile::default();
    for input in &g.inputs {
        if input.shape.iter().all(|d| d.is_u64()) {
            continue; // static
        }
        let mut dims = [Vec::new(), Vec::new(), Vec::new()];
        for d in &input.shape {
            let (lo, opt, hi) = match d {
                serde_json::Value::String(s) => dim_range(s, m, l),
                other => {
                    let v = other.as_u64().unwrap_or(1) as usize;
                    (v, v, v)
                }
            };
            dims[0].push(lo);
            dims[1].push(opt);
            dims[2].push(hi);
        }
        let [lo, opt, hi] = dims;
        p.min.push((input.name.clone(), lo));
        p.opt.push((input.name.clone(), opt));
        p.max.push((input.name.clone(), hi));
    }
    p
}

/// The engine / timing cache directory of a graph: one per model, graph and
/// precision setting, so changing a flag never reuses a stale engine.
pub fn engine_cache_dir(model_dir: &Path, role: &str, o: &GpuOptions) -> PathBuf {
    let base = o
        .cache_dir
        .clone()
        .unwrap_or_else(|| model_dir.join("trt-cache"));
    let mut tag = format!("{role}-dev{}", o.device_id);
    if o.trt_fp16 {
        tag.push_str("-fp16");
    }
    if o.trt_int8 {
        tag.push_str("-int8");
    }
    base.join(tag)
}

/// The TensorRT provider's calibration table of a graph, if int8 is on.
pub fn calibration_table(role: &str, o: &GpuOptions) -> Option<PathBuf> {
    o.trt_int8
        .then(|| {
            o.calibration_dir
                .as_ref()
                .map(|d| d.join(format!("{role}.ort-trt.flatbuffers")))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let text = include_str!("../tests/data/manifest-tiny-llama.json");
        serde_json::from_str(text).expect("test manifest")
    }

    #[test]
    fn decoder_profiles_cover_prefill_and_decode() {
        let m = manifest();
        let p = profile(
            &m,
            m.graph(flamingo_contract::GraphRole::Decoder).unwrap(),
            &ProfileLimits::default(),
        );
        let min = Profile::shapes(&p.min);
        let max = Profile::shapes(&p.max);
        assert!(min.contains("input_ids:1x1"), "{min}");
        assert!(min.contains("past_key_values.0.key:1x2x0x16"), "{min}");
        assert!(max.contains("attention_mask:8x2048"), "{max}");
        assert!(max.contains("media_kv.1.key:8x8x512x64"), "{max}");
        assert!(
            !min.contains("num_logits_to_keep"),
            "static inputs have no profile"
        );
        assert_eq!(p.min.len(), p.max.len());
    }

    #[test]
    fn engine_caches_are_per_graph_device_and_precision() {
        let o = GpuOptions {
            trt_fp16: true,
            ..Default::default()
        };
        let d = engine_cache_dir(Path::new("/m"), "decoder", &o);
        assert_eq!(d, Path::new("/m/trt-cache/decoder-dev0-fp16"));
        let o8 = GpuOptions {
            trt_int8: true,
            device_id: 1,
            cache_dir: Some("/c".into()),
            calibration_dir: Some("/cal/calibration".into()),
            ..Default::default()
        };
        assert_eq!(
            engine_cache_dir(Path::new("/m"), "decoder", &o8),
            Path::new("/c/decoder-dev1-int8")
        );
        assert_eq!(
            calibration_table("decoder", &o8),
            Some(PathBuf::from(
                "/cal/calibration/decoder.ort-trt.flatbuffers"
            ))
        );
        assert_eq!(calibration_table("decoder", &o), None);
    }
}
