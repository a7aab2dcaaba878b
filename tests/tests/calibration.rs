//! Static int8 calibration: accuracy of the QDQ graphs against fp32, the
//! TensorRT cache and ONNX Runtime TensorRT table formats against the
//! observed ranges, and clean failures.

use anyhow::{Context, Result};
use flamingo_calibration::calibrate::{observe, write, Ranges};
use flamingo_calibration::observe::Method;
use flamingo_calibration::tables::read_ort_trt_table;
use flamingo_export::NoProgress;
use flamingo_runtime::decoder::{media_time, position_ids};
use flamingo_runtime::{BackendKind, GenerateOptions, Media, Model, Request, Step};
use flamingo_tests::*;
use ndarray::Array2;

fn image(fx: &str, i: usize) -> Media {
    Media::Image(fixture(fx).join(format!("images/img{i}.png")))
}

/// The fixture's prompts as calibration requests.
fn requests(fx: &str) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        let Some(p) = case["prompt"].as_str() else {
            continue;
        };
        let media = match case.get("frames") {
            Some(f) => vec![Media::Video(
                indices(f)
                    .into_iter()
                    .map(|i| fixture(fx).join(format!("images/img{i}.png")))
                    .collect(),
            )],
            None => indices(&case["images"])
                .into_iter()
                .map(|i| image(fx, i))
                .collect(),
        };
        out.push(Request {
            prompt: p.to_string(),
            media,
            options: GenerateOptions {
                max_new_tokens: 4,
                ..Default::default()
            },
        });
    }
    Ok(out)
}

fn calibrated(fx: &str, method: Method, tag: &str) -> Result<(std::path::PathBuf, Ranges)> {
    let reqs = requests(fx)?;
    let ranges = observe(
        &exported(fx)?,
        &reqs,
        method,
        BackendKind::OrtCpu,
        &mut |_| {},
    )?;
    let out = scratch().join(format!("calibrated-{fx}-{tag}"));
    write(
        &exported(fx)?,
        &out,
        true,
        &ranges,
        method,
        reqs.len(),
        &mut NoProgress,
    )?;
    Ok((out, ranges))
}

fn prompt_logits(model: &mut Model, req: &Request) -> Result<ndarray::ArrayD<f32>> {
    let enc = model.encode(&req.media)?;
    let kv = model.media_kv(enc.latents)?;
    let tok = flamingo_runtime::tokenizer::Tokenizer::load(&model.dir.join("tokenizer"))?;
    let ids: Vec<i64> = tok
        .encode(&req.prompt)?
        .into_iter()
        .map(|t| t as i64)
        .collect();
    let n = ids.len();
    let row = |v: Vec<i64>| Array2::from_shape_vec((1, n), v);
    let step = Step {
        input_ids: row(ids.clone())?,
        attention_mask: row(vec![1; n])?,
        position_ids: row(position_ids(&vec![1; n]))?,
        media_time: row(media_time(&ids, model.manifest.special_tokens.media as i64))?,
        keep: n,
    };
    let mut cache = model.empty_cache(1);
    Ok(model.decode(&step, &kv, &mut cache)?)
}

#[test]
fn static_int8_qdq_graphs_stay_close_to_fp32() -> Result<()> {
    for fx in FIXTURES {
        let (dir, ranges) = calibrated(fx, Method::Entropy, "entropy")?;
        for role in ["vision_encoder", "resampler", "media_kv", "decoder"] {
            assert!(
                ranges.get(role).is_some_and(|r| !r.is_empty()),
                "{fx}: {role} observed"
            );
        }
        for backend in BACKENDS {
            let mut a = Model::load(&exported(fx)?, backend)?;
            let mut b = Model::load(&dir, backend)?;
            assert_eq!(b.manifest.precision.as_str(), "int8-qdq");
            for req in requests(fx)? {
                let c = cosine(&prompt_logits(&mut a, &req)?, &prompt_logits(&mut b, &req)?)?;
                eprintln!(
                    "int8 QDQ {backend} {fx} {:?}: logits cosine {c:.6}",
                    req.prompt
                );
                let floor = tolerance::logits_cosine_of("qdq-entropy", fx);
                assert!(c >= floor, "{backend} {fx}: QDQ cosine {c}");
            }
        }
    }
    Ok(())
}

#[test]
fn trt_caches_and_provider_tables_hold_the_observed_ranges() -> Result<()> {
    let fx = "tiny-neox";
    let (dir, ranges) = calibrated(fx, Method::MinMax, "minmax")?;
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("calibration/report.json"),
    )?)?;
    assert_eq!(report["method"], "minmax");
    for (role, r) in &ranges {
        // TensorRT's text cache: header, then `name: hex(float32 bits of scale)`
        let cache = std::fs::read_to_string(dir.join(format!("calibration/{role}.trt.cache")))?;
        let mut lines = cache.lines();
        assert_eq!(lines.next(), Some("TRT-8601-MinMaxCalibration"));
        let body: Vec<&str> = lines.collect();
        assert_eq!(body.len(), r.len(), "{role}: one line per tensor");
        for line in body {
            let (name, hex) = line.rsplit_once(": ").context("name: hex")?;
            let scale = f32::from_bits(u32::from_str_radix(hex, 16)?);
            let range = &r[name];
            // minmax: the threshold is the observed max |x|, and the report says so
            assert_eq!(
                range.threshold,
                range.min.abs().max(range.max.abs()),
                "{name}"
            );
            assert_eq!(scale, range.threshold / 127.0, "{name}");
            let rep = &report["graphs"][role][name];
            assert_eq!(rep["min"].as_f64().map(|v| v as f32), Some(range.min));
            assert_eq!(rep["max"].as_f64().map(|v| v as f32), Some(range.max));
        }
        // ONNX Runtime's TensorRT table: key -> dynamic range, keys sorted
        let table = read_ort_trt_table(&std::fs::read(
            dir.join(format!("calibration/{role}.ort-trt.flatbuffers")),
        )?)
        .context("a TrtTable flatbuffer")?;
        assert_eq!(table.len(), r.len());
        for (k, v) in &table {
            assert_eq!(v.parse::<f32>()?, r[k].threshold, "{k}");
        }
        let keys: Vec<&String> = table.iter().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted keys");
    }
    Ok(())
}

#[test]
fn bad_calibration_data_is_a_clear_error_and_leaves_nothing() -> Result<()> {
    let fx = "tiny-mpt";
    let model = exported(fx)?;
    let err = observe(
        &model,
        &[],
        Method::Entropy,
        BackendKind::OrtCpu,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no calibration requests"), "{err}");
    let mut reqs = requests(fx)?;
    let n = reqs[1].media.len();
    reqs[1].media = vec![Media::Image(fixture(fx).join("images/missing.png")); n];
    let err = observe(
        &model,
        &reqs,
        Method::Entropy,
        BackendKind::OrtCpu,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("request 2") && err.contains("missing.png"),
        "{err}"
    );
    Ok(())
}
