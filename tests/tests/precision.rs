//! Precision rewrites against the fp32 export: the ONNX reader round trip,
//! fp16 accuracy (logits cosine, greedy ids) on every backend.

use anyhow::{Context, Result};
use flamingo_graphs::onnx::{self, WriteOptions};
use flamingo_runtime::decoder::{media_time, position_ids};
use flamingo_runtime::{GenerateOptions, Media, Model, Pipeline, Request, Step};
use flamingo_tests::*;
use ndarray::Array2;

fn fp16(fx: &str) -> Result<std::path::PathBuf> {
    converted(fx, "fp16", &|_, g| {
        flamingo_calibration::fp16::to_fp16(g).map(Some)
    })
}

#[test]
fn reading_an_export_back_and_writing_it_gives_the_same_bytes() -> Result<()> {
    let dir = exported("tiny-llama")?;
    let m = flamingo_export::Manifest::load(&dir)?;
    let out = scratch().join("roundtrip");
    std::fs::create_dir_all(&out)?;
    for info in m.graphs.values() {
        let (g, opsets) = flamingo_export::onnx_read::read(&dir.join(&info.file))?;
        let opts = WriteOptions {
            extra_opsets: opsets,
            ..Default::default()
        };
        let w = onnx::write(&g, &out, &info.file, &opts, &mut |_| {})?;
        assert_eq!(
            std::fs::read(&w.model)?,
            std::fs::read(dir.join(&info.file))?,
            "{}",
            info.file
        );
        if let Some(d) = &info.data_file {
            assert_eq!(
                std::fs::read(out.join(d))?,
                std::fs::read(dir.join(d))?,
                "{d}"
            );
        }
    }
    Ok(())
}

/// Full-prompt logits of every case with reference logits, from the PNGs.
fn case_logits(model: &mut Model, fx: &str) -> Result<Vec<(String, ndarray::ArrayD<f32>)>> {
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
        let media: Vec<Media> = if case.get("frames").is_some() {
            vec![Media::Video(paths)]
        } else {
            paths.into_iter().map(Media::Image).collect()
        };
        let enc = model.encode(&media)?;
        let kv = model.media_kv(enc.latents)?;
        let ids: Vec<i64> = case["input_ids"]
            .as_array()
            .context("ids")?
            .iter()
            .filter_map(|v| v.as_i64())
            .collect();
        let n = ids.len();
        let row = |v: Vec<i64>| Array2::from_shape_vec((1, n), v);
        let step = Step {
            input_ids: row(ids.clone())?,
            attention_mask: row(vec![1; n])?,
            position_ids: row(position_ids(&vec![1; n]))?,
            media_time: row(media_time(&ids, 401))?,
            keep: n,
        };
        let mut cache = model.empty_cache(1);
        out.push((
            case["name"].as_str().unwrap_or("").to_string(),
            model.decode(&step, &kv, &mut cache)?,
        ));
    }
    Ok(out)
}

#[test]
fn fp16_logits_stay_close_and_greedy_ids_match_where_the_margin_allows() -> Result<()> {
    for backend in BACKENDS {
        for fx in FIXTURES {
            let mut a = Model::load(&exported(fx)?, backend)?;
            let mut b = Model::load(&fp16(fx)?, backend)?;
            assert_eq!(b.manifest.precision, "fp16");
            for ((name, la), (_, lb)) in case_logits(&mut a, fx)?
                .iter()
                .zip(case_logits(&mut b, fx)?)
            {
                let c = cosine(la, &lb)?;
                eprintln!(
                    "fp16 {backend} {fx} {name}: logits cosine {c:.6}, max abs {:.3e}",
                    max_abs_diff(la, &lb)?
                );
                assert!(c >= 0.9995, "{backend} {fx} {name}: fp16 cosine {c}");
            }
            if fx == "tiny-llama-video" {
                continue;
            }
            let mut pa = Pipeline::load(&exported(fx)?, backend)?;
            let mut pb = Pipeline::load(&fp16(fx)?, backend)?;
            for case in cases(fx)?["cases"].as_array().context("cases")? {
                let Some(g) = case.get("greedy").filter(|_| case.get("prompt").is_some()) else {
                    continue;
                };
                if g["min_top2_margin"].as_f64().unwrap_or(0.0) <= 0.05 {
                    continue;
                }
                let req = Request {
                    prompt: case["prompt"].as_str().context("prompt")?.into(),
                    media: indices(&case["images"])
                        .into_iter()
                        .map(|i| Media::Image(fixture(fx).join(format!("images/img{i}.png"))))
                        .collect(),
                    options: GenerateOptions {
                        max_new_tokens: 10,
                        ..Default::default()
                    },
                };
                let (x, y) = (pa.generate(&req)?, pb.generate(&req)?);
                assert_eq!(
                    x.sequences[0].generated_ids, y.sequences[0].generated_ids,
                    "{backend} {fx} {}",
                    case["name"]
                );
            }
        }
    }
    Ok(())
}
