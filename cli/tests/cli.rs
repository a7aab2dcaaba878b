//! The built `flamingo` binary, end to end on the fixtures: export, then
//! `generate --json` (single prompts and a JSONL batch) and `score --json`
//! against the reference, on both backends; malformed batch lines fail alone.

use serde_json::{json, Value};

mod common;

use common::{export, fixture, flamingo};

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn generate_and_score_json_match_the_reference_on_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    for fx in ["tiny-mpt", "tiny-neox", "tiny-llama", "tiny-mosaic"] {
        let model = tmp.path().join(fx);
        export(fx, &model);
        let model_s = model.display().to_string();
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(fx).join("cases.json")).unwrap())
                .unwrap();
        let cases = cases["cases"].as_array().unwrap();
        // a JSONL batch with every greedy and beam case
        let mut batch = String::new();
        let mut want = Vec::new();
        for c in cases
            .iter()
            .filter(|c| c.get("prompt").is_some() && c.get("greedy").is_some())
        {
            for mode in ["greedy", "beam"] {
                let spec = &c[mode];
                let media: Vec<String> = c["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        fixture(fx)
                            .join(format!("images/img{i}.png"))
                            .display()
                            .to_string()
                    })
                    .collect();
                let mut req = json!({
                    "prompt": c["prompt"],
                    "media": media,
                    "max_new_tokens": spec["max_new_tokens"],
                    "stop_tokens": [spec["eos_token_id"]],
                });
                if mode == "beam" {
                    req["num_beams"] = spec["num_beams"].clone();
                }
                batch.push_str(&format!("{req}\n"));
                want.push((c["input_ids"].clone(), spec["output_ids"].clone()));
            }
        }
        let batch_file = tmp.path().join(format!("{fx}.jsonl"));
        std::fs::write(&batch_file, &batch).unwrap();
        for backend in ["tract", "ort-cpu"] {
            let (ok, out, err) = flamingo(&[
                "generate",
                "--model",
                &model_s,
                "--batch",
                &batch_file.display().to_string(),
                "--backend",
                backend,
                "--json",
            ]);
            assert!(ok, "{fx} {backend}: {err}");
            let got = lines(&out);
            assert_eq!(got.len(), want.len());
            for (g, (prompt, full)) in got.iter().zip(&want) {
                assert_eq!(&g["prompt_ids"], prompt);
                let mut ids: Vec<Value> = g["prompt_ids"].as_array().unwrap().clone();
                ids.extend(g["generated_ids"].as_array().unwrap().iter().cloned());
                assert_eq!(&Value::from(ids), full, "{fx} {backend}");
                assert!(g["text"].is_string());
            }
        }
        // one single-prompt run, and scoring
        let c = &cases[0];
        let img = fixture(fx).join(format!("images/img{}.png", c["images"][0]));
        let (ok, out, err) = flamingo(&[
            "generate",
            "--model",
            &model_s,
            "--prompt",
            c["prompt"].as_str().unwrap(),
            "--image",
            &img.display().to_string(),
            "--max-new-tokens",
            "10",
            "--json",
        ]);
        assert!(ok, "{err}");
        let g = &lines(&out)[0];
        let full = c["greedy"]["output_ids"].as_array().unwrap();
        assert_eq!(
            g["generated_ids"].as_array().unwrap()[..],
            full[c["input_ids"].as_array().unwrap().len()..]
        );
        let s = cases.iter().find(|c| c["name"] == "scoring").unwrap();
        let img = fixture(fx).join(format!("images/img{}.png", s["images"][0]));
        let mut args = vec![
            "score".to_string(),
            "--model".into(),
            model_s.clone(),
            "--prompt".into(),
            s["prompt"].as_str().unwrap().into(),
            "--image".into(),
            img.display().to_string(),
            "--json".into(),
            "--backend".into(),
            "ort-cpu".into(),
        ];
        for cand in s["candidates"].as_array().unwrap() {
            args.push("--candidate".into());
            args.push(cand.as_str().unwrap().into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = flamingo(&args);
        assert!(ok, "{err}");
        let r = &lines(&out)[0];
        let sums = s["candidate_logprob_sums"].as_array().unwrap();
        let mut best = (0, f64::MIN);
        for (i, (c, w)) in r["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .zip(sums)
            .enumerate()
        {
            let (got, want) = (c["logprob_sum"].as_f64().unwrap(), w.as_f64().unwrap());
            assert!((got - want).abs() <= 1e-3, "{fx} score {got} vs {want}");
            assert!(c["num_tokens"].as_u64().unwrap() > 0);
            if want > best.1 {
                best = (i, want);
            }
        }
        assert_eq!(r["best"], best.0);
    }
}

/// `convert --precision fp32-ort`: the decoder fused for ONNX Runtime
/// (its KV cache updated in place where self-attention fuses) gives the
/// reference's greedy ids on ort-cpu; tract, a second rewrite and unknown
/// settings are refused with a message.
#[test]
fn convert_fp32_ort_matches_the_reference_and_is_refused_where_it_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    // ALiBi decoders fuse their self-attention (in place); rotary ones keep it
    for (fx, in_place) in [
        ("tiny-mpt", true),
        ("tiny-mosaic", true),
        ("tiny-llama", false),
    ] {
        let src = tmp.path().join(fx);
        export(fx, &src);
        let fused = tmp.path().join(format!("{fx}-fp32-ort"));
        let (src_s, fused_s) = (src.display().to_string(), fused.display().to_string());
        let (ok, out, err) = flamingo(&[
            "convert",
            "--precision",
            "fp32-ort",
            &src_s,
            &fused_s,
            "--json",
        ]);
        assert!(ok, "{fx}: {err}");
        let m: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(m["precision"], "fp32-ort");
        let dec = &m["graphs"]["decoder"];
        assert_eq!(dec["requires"], "onnxruntime", "{fx}");
        assert_eq!(dec["kv_update"] == "in-place", in_place, "{fx}: {dec}");
        assert!(m["graphs"]["vision_encoder"].get("requires").is_none());
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(fx).join("cases.json")).unwrap())
                .unwrap();
        let c = &cases["cases"][0];
        let img = fixture(fx).join(format!("images/img{}.png", c["images"][0]));
        let img = img.display().to_string();
        let prompt = c["prompt"].as_str().unwrap();
        let n = c["greedy"]["max_new_tokens"].to_string();
        let generate = |backend: &str| {
            flamingo(&[
                "generate",
                "--model",
                &fused_s,
                "--prompt",
                prompt,
                "--image",
                &img,
                "--max-new-tokens",
                &n,
                "--backend",
                backend,
                "--json",
            ])
        };
        let (ok, out, err) = generate("ort-cpu");
        assert!(ok, "{fx}: {err}");
        let g = &lines(&out)[0];
        let full = c["greedy"]["output_ids"].as_array().unwrap();
        let prompt_len = c["input_ids"].as_array().unwrap().len();
        let got = g["generated_ids"].as_array().unwrap();
        assert_eq!(got[..], full[prompt_len..prompt_len + got.len()], "{fx}");
        assert!(!got.is_empty());
        let (ok, _, err) = generate("tract");
        assert!(!ok && err.contains("ort-cpu"), "{fx}: {err}");
        // rewrites do not compose
        let again = tmp.path().join(format!("{fx}-again")).display().to_string();
        let (ok, _, err) = flamingo(&["convert", "--precision", "fp16", &fused_s, &again]);
        assert!(!ok && err.contains("fp32"), "{fx}: {err}");
        assert!(!std::path::Path::new(&again).exists());
    }
    let src = tmp.path().join("tiny-mpt").display().to_string();
    let plain = tmp.path().join("plain").display().to_string();
    let (ok, out, err) = flamingo(&[
        "convert",
        "--precision",
        "fp32-ort",
        "--plain-kv-cache",
        &src,
        &plain,
        "--json",
    ]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&out).unwrap();
    assert!(m["graphs"]["decoder"].get("kv_update").is_none(), "{m}");
    let bad = tmp.path().join("bad").display().to_string();
    for args in [
        vec!["convert", "--precision", "fp64", &src, &bad],
        vec![
            "convert",
            "--precision",
            "fp16",
            "--plain-kv-cache",
            &src,
            &bad,
        ],
    ] {
        let (ok, _, err) = flamingo(&args);
        assert!(!ok && err.contains("precision"), "{args:?}: {err}");
        assert!(!std::path::Path::new(&bad).exists());
    }
}

#[test]
fn malformed_batch_lines_fail_alone_and_the_rest_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    export("tiny-mpt", &model);
    let dir = tmp.path().join("req");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("tiny-mpt").join("images/img0.png"),
        dir.join("a.png"),
    )
    .unwrap();
    let batch = dir.join("b.jsonl");
    std::fs::write(
        &batch,
        [
            r#"{"prompt": "<image>a photo of", "media": ["a.png"], "max_new_tokens": 3}"#,
            r#"{"prompt": "<image>a photo of", "media": ["a.png""#,
            r#"{"prompt": "<image>x", "media": ["missing.png"]}"#,
            r#"{"prompt": "<image><image>x", "media": ["a.png"]}"#,
            r#"{"prompt": "<image>x", "media": ["a.png"], "max_new_tokens": 100000}"#,
            r#"{"prompt": "<image>a photo of", "media": ["a.png"], "max_new_tokens": 2}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (ok, out, err) = flamingo(&[
        "generate",
        "--model",
        &model.display().to_string(),
        "--batch",
        &batch.display().to_string(),
        "--json",
    ]);
    assert!(!ok, "a batch with failures exits non-zero");
    assert!(err.contains("4 request(s) failed"), "{err}");
    let got = lines(&out);
    assert_eq!(got.len(), 6, "one output line per request, in order");
    assert_eq!(got[0]["generated_ids"].as_array().unwrap().len(), 3);
    assert!(got[1]["error"].as_str().unwrap().contains("not valid JSON"));
    assert!(got[2]["error"].as_str().unwrap().contains("missing.png"));
    assert!(got[3]["error"]
        .as_str()
        .unwrap()
        .contains("2 <image> marker(s) but 1 media"));
    assert!(got[4]["error"]
        .as_str()
        .unwrap()
        .contains("longer than the model allows"));
    assert_eq!(got[5]["generated_ids"].as_array().unwrap().len(), 2);
}

#[test]
fn clear_errors_instead_of_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = flamingo(&["inspect", &tmp.path().display().to_string()]);
    assert!(!ok && err.contains("manifest.json"), "{err}");
    let model = tmp.path().join("m");
    export("tiny-mpt", &model);
    let m = model.display().to_string();
    let notimg = fixture("tiny-mpt").join("cases.json").display().to_string();
    let (ok, _, err) = flamingo(&[
        "generate", "--model", &m, "--prompt", "<image>x", "--image", &notimg,
    ]);
    assert!(
        !ok && err.contains("not a readable image") && err.contains("cases.json"),
        "{err}"
    );
    let (ok, _, err) = flamingo(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "no marker",
        "--image",
        &notimg,
    ]);
    assert!(
        !ok && err.contains("0 <image> marker(s) but 1 media"),
        "{err}"
    );
    let (ok, _, err) = flamingo(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "x",
        "--backend",
        "ort-cuda",
    ]);
    assert!(!ok && err.contains("ort-cuda"), "{err}");
    let (ok, _, err) = flamingo(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "x",
        "--backend",
        "nope",
    ]);
    assert!(!ok && err.contains("unknown backend"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn calibrate_refuses_empty_data_and_a_failure_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    export("tiny-mpt", &model);
    let (m, out) = (model.display().to_string(), tmp.path().join("cal"));
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, err) = flamingo(&[
        "calibrate",
        "--model",
        &m,
        "--data",
        &empty.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(!ok && err.contains("no calibration requests"), "{err}");
    let img = fixture("tiny-mpt")
        .join("images/img0.png")
        .display()
        .to_string();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(
        &data,
        format!(
            "{}\n{}\n",
            json!({"prompt": "<image>a", "media": [img]}),
            json!({"prompt": "<image>b", "media": ["nope.png"]})
        ),
    )
    .unwrap();
    let (ok, _, err) = flamingo(&[
        "calibrate",
        "--model",
        &m,
        "--data",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(
        !ok && err.contains("request 2") && err.contains("nope.png"),
        "{err}"
    );
    assert!(!out.exists(), "no output after a failed calibration");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn quantize_int4_with_gptq_data_and_its_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    export("tiny-mpt", &model);
    let m = model.display().to_string();
    let img = |i: usize| {
        fixture("tiny-mpt")
            .join(format!("images/img{i}.png"))
            .display()
            .to_string()
    };
    let data = tmp.path().join("d.jsonl");
    std::fs::write(
        &data,
        format!(
            "{}\n{}\n",
            json!({"prompt": "<image>a dog on a sofa", "media": [img(0)]}),
            json!({"prompt": "<image>one.<|endofchunk|><image>two", "media": [img(1), img(2)]})
        ),
    )
    .unwrap();
    let d = data.display().to_string();
    let out = tmp.path().join("q");
    let o = out.display().to_string();
    let (ok, stdout, err) = flamingo(&[
        "quantize",
        "--weights",
        "int4",
        "--data",
        &d,
        "--json",
        &m,
        &o,
    ]);
    assert!(ok, "{err}");
    let manifest: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(manifest["precision"], "int4-weights");
    assert_eq!(manifest["graphs"]["decoder"]["requires"], "onnxruntime");
    // the MatMulNBits decoder runs on ONNX Runtime's fused kernels
    let dec = std::fs::read(out.join("decoder.onnx")).unwrap();
    let has = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
    assert_eq!(manifest["graphs"]["decoder"]["kv_update"], "in-place");
    for op in [
        "GroupQueryAttention",
        "MultiHeadAttention",
        "SkipLayerNormalization",
        "Gelu",
        ".zero_points",
    ] {
        assert!(has(&dec, op), "{op}");
    }
    // the fastest setting: symmetric blocks carry no zero points
    let fast = tmp.path().join("fast");
    let (ok, _, err) = flamingo(&[
        "quantize",
        "--weights",
        "int4",
        "--block-size",
        "128",
        "--symmetric",
        "--head-bits",
        "4",
        &m,
        &fast.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let dec = std::fs::read(fast.join("decoder.onnx")).unwrap();
    assert!(has(&dec, "MatMulNBits") && !has(&dec, ".zero_points"));
    // for the CUDA provider: self-attention over a concatenated cache
    let plain = tmp.path().join("plain");
    let (ok, stdout, err) = flamingo(&[
        "quantize",
        "--weights",
        "int4",
        "--plain-kv-cache",
        "--json",
        &m,
        &plain.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let manifest: Value = serde_json::from_str(&stdout).unwrap();
    assert!(manifest["graphs"]["decoder"].get("kv_update").is_none());
    let dec = std::fs::read(plain.join("decoder.onnx")).unwrap();
    assert!(has(&dec, "MultiHeadAttention") && !has(&dec, "GroupQueryAttention"));
    // this runtime's int8 kernel, with GPTQ on the same data: fused, no
    // MatMulNBits, the ai.flamingo operator set declared
    let own = tmp.path().join("own");
    let (ok, stdout, err) = flamingo(&[
        "quantize",
        "--weights",
        "int8-flamingo",
        "--data",
        &d,
        "--json",
        &m,
        &own.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let manifest: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(manifest["precision"], "int8-weights-flamingo");
    assert_eq!(manifest["graphs"]["decoder"]["requires"], "onnxruntime");
    assert_eq!(manifest["graphs"]["decoder"]["kv_update"], "in-place");
    let dec = std::fs::read(own.join("decoder.onnx")).unwrap();
    for op in ["MatMulInt8", "ai.flamingo", "GroupQueryAttention"] {
        assert!(has(&dec, op), "{op}");
    }
    assert!(!has(&dec, "MatMulNBits"));
    // this runtime's int4 kernel, GPTQ, blocks of 64, the head at 4 bits:
    // every product in MatMulInt4
    let own4 = tmp.path().join("own4");
    let (ok, stdout, err) = flamingo(&[
        "quantize",
        "--weights",
        "int4-flamingo",
        "--block-size",
        "64",
        "--head-bits",
        "4",
        "--data",
        &d,
        "--json",
        &m,
        &own4.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let manifest: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(manifest["precision"], "int4-weights-flamingo");
    assert_eq!(manifest["graphs"]["decoder"]["requires"], "onnxruntime");
    let dec = std::fs::read(own4.join("decoder.onnx")).unwrap();
    for op in [
        "MatMulInt4",
        "ai.flamingo",
        "block_size",
        "GroupQueryAttention",
    ] {
        assert!(has(&dec, op), "{op}");
    }
    assert!(!has(&dec, "MatMulNBits") && !has(&dec, "MatMulInt8"));
    for bad in [
        vec!["--weights", "int8", "--plain-kv-cache"],
        vec!["--weights", "int8", "--symmetric"],
        vec!["--weights", "int4", "--head-bits", "5"],
        vec!["--weights", "int8-flamingo", "--symmetric"],
        vec!["--weights", "int8-flamingo", "--head-bits", "4"],
        vec!["--weights", "int8-flamingo", "--block-size", "64"],
        vec!["--weights", "int4-flamingo", "--symmetric"],
        vec!["--weights", "int4-flamingo", "--block-size", "48"],
        vec!["--weights", "int4-flamingo", "--block-size", "16"],
        vec!["--weights", "int9"],
    ] {
        let o = tmp.path().join("bad");
        let mut args = vec!["quantize"];
        args.extend(bad.iter().copied());
        let os = o.display().to_string();
        args.extend([m.as_str(), os.as_str()]);
        let (ok, _, err) = flamingo(&args);
        assert!(
            !ok && err.contains("--") && !err.contains("panicked"),
            "{err}"
        );
        assert!(!o.exists());
    }
    // int8 has no GPTQ path: a clear error, nothing written
    let out8 = tmp.path().join("q8");
    let (ok, _, err) = flamingo(&[
        "quantize",
        "--weights",
        "int8",
        "--data",
        &d,
        &m,
        &out8.display().to_string(),
    ]);
    assert!(!ok && err.contains("applies to --weights int4"), "{err}");
    assert!(!out8.exists());
    // a missing image fails naming it, and leaves no output
    std::fs::write(
        &data,
        format!("{}\n", json!({"prompt": "<image>b", "media": ["nope.png"]})),
    )
    .unwrap();
    let out2 = tmp.path().join("q2");
    let (ok, _, err) = flamingo(&[
        "quantize",
        "--weights",
        "int4",
        "--data",
        &d,
        &m,
        &out2.display().to_string(),
    ]);
    assert!(!ok && err.contains("nope.png"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out2.exists());
}

#[test]
fn bench_smoke_test_on_a_tiny_model_writes_its_json() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    export("tiny-llama", &model);
    for backend in ["tract", "ort-cpu"] {
        let png = tmp.path().join(format!("{backend}.png"));
        let (ok, out, err) = flamingo(&[
            "bench",
            "--plot",
            &png.display().to_string(),
            "--model",
            &model.display().to_string(),
            "--backend",
            backend,
            "--shots",
            "0,1",
            "--batch",
            "1,2",
            "--new-tokens",
            "3",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--bandwidth-bytes",
            "1048576",
            "--json",
        ]);
        assert!(ok, "{err}");
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["backend"], backend);
        assert_eq!(
            r["decode"].as_array().unwrap().len(),
            4,
            "2 shot counts x 2 batch sizes"
        );
        for d in r["decode"].as_array().unwrap() {
            assert!(d["decode"]["p50_ms"].as_f64().unwrap() > 0.0);
            assert!(d["tokens_per_s"].as_f64().unwrap() > 0.0);
        }
        assert!(r["memory_bandwidth_gb_s"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert_eq!(r["decode_vs_context"].as_array().unwrap().len(), 2 * 3);
        let c = &r["media_cost_at_equal_context"];
        assert_eq!(c["images"], 2);
        assert_eq!(c["context"], r["decode"][2]["prompt_tokens"]);
        assert!(c["ratio"].as_f64().unwrap() > 0.0);
        assert!(r["run_peak_rss_bytes"].as_u64().unwrap() > 0);
        assert!(r["weight_bytes"].as_u64().unwrap() > r["decoder_weight_bytes"].as_u64().unwrap());
        // the chart: a PNG of the documented size with more than background
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1100, 480));
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(inked > 5000, "{inked} non-background pixels");
    }
    // a chart path in a missing directory is refused before any work
    let (ok, _, err) = flamingo(&[
        "bench",
        "--model",
        &model.display().to_string(),
        "--plot",
        "/nonexistent-dir/x.png",
    ]);
    assert!(!ok && err.contains("no such directory"), "{err}");
    // against a baseline export of the same model, timed alternately
    let m = model.display().to_string();
    let quick = [
        "--shots",
        "0",
        "--batch",
        "1",
        "--new-tokens",
        "2",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--bandwidth-bytes",
        "1048576",
        "--json",
    ];
    let mut args = vec!["bench", "--model", &m, "--baseline", &m];
    args.extend(quick);
    let (ok, out, err) = flamingo(&args);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let v = &r["baseline"]["decode"];
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let f = |k: &str| v[0][k].as_f64().unwrap();
    assert!(f("p50_ms") > 0.0 && f("baseline_p50_ms") > 0.0);
    assert!((f("speedup") - f("baseline_p50_ms") / f("p50_ms")).abs() < 1e-9);
    // another model is refused
    let other = tmp.path().join("other");
    export("tiny-mpt", &other);
    let o = other.display().to_string();
    let mut args = vec!["bench", "--model", &m, "--baseline", &o];
    args.extend(quick);
    let (ok, _, err) = flamingo(&args);
    assert!(!ok && err.contains("not the same model"), "{err}");
    // a quantised export keeps its tied embedding as float32 for the
    // lookup only: the roofline counts it as a row per token, not as bytes
    // a step reads
    let q = tmp.path().join("q");
    let (ok, _, err) = flamingo(&[
        "quantize",
        "--weights",
        "int8-flamingo",
        &o,
        &q.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let qs = q.display().to_string();
    let mut args = vec!["bench", "--model", &qs];
    args.extend(quick);
    let (ok, out, err) = flamingo(&args);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("manifest.json")).unwrap()).unwrap();
    let dec = &manifest["model"]["decoder"];
    let table = dec["vocab_size"].as_u64().unwrap() * dec["hidden_size"].as_u64().unwrap() * 4;
    let data = std::fs::metadata(q.join("decoder.onnx.data"))
        .unwrap()
        .len();
    assert_eq!(r["decoder_weight_bytes"].as_u64().unwrap(), data - table);
}

#[test]
fn presets_are_known_by_name_and_unknown_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p").display().to_string();
    let (ok, _, err) = flamingo(&[
        "export",
        "--preset",
        "of-huge",
        "--random-weights",
        "--out",
        &out,
    ]);
    assert!(
        !ok && err.contains("unknown preset") && err.contains("of-mini"),
        "{err}"
    );
    let (ok, _, err) = flamingo(&["export", "--preset", "of-mini", "--out", &out]);
    assert!(!ok && err.contains("random-weights"), "{err}");
}

#[test]
fn releases_are_known_by_name_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture("tiny-mosaic");
    let p = |s: &str| f.join(s).display().to_string();
    for (release, needle) in [
        ("openflamingo-80b", "openflamingo-3b-vitl-mpt1b"),
        ("openflamingo-9b-vitl-mpt7b", "has 224"),
    ] {
        let out = tmp.path().join(release);
        let (ok, _, err) = flamingo(&[
            "export",
            "--release",
            release,
            "--clip",
            &p("clip/model.pt"),
            "--lm",
            &p("lm"),
            "--checkpoint",
            &p("checkpoint.pt"),
            "--out",
            &out.display().to_string(),
        ]);
        assert!(
            !ok && err.contains(needle) && !err.contains("panicked"),
            "{err}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn eval_imagenet_compares_two_exports_and_writes_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    export("tiny-mpt", &model);
    let int4 = tmp.path().join("m-int4");
    let (ok, _, err) = flamingo(&[
        "quantize",
        "--weights",
        "int4",
        &model.display().to_string(),
        &int4.display().to_string(),
    ]);
    assert!(ok, "{err}");
    // an ImageNet tree of four classes, a class-name file
    let root = tmp.path().join("imagenet");
    let names = ["tench", "goldfish", "great white shark", "tiger shark"];
    for split in ["train", "val"] {
        for c in 0..names.len() {
            let dir = root.join(split).join(format!("n0{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..2 {
                std::fs::copy(
                    fixture("tiny-mpt").join(format!("images/img{}.png", (c + k) % 4)),
                    dir.join(format!("{k}.png")),
                )
                .unwrap();
            }
        }
    }
    let classes = tmp.path().join("classes.txt");
    std::fs::write(&classes, names.join("\n")).unwrap();
    let out = tmp.path().join("preds.json");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "ort-cpu",
            "--task",
            "imagenet",
            "--imagenet-root",
            root.to_str().unwrap(),
            "--class-names",
            classes.to_str().unwrap(),
            "--num-samples",
            "0",
            "--json",
        ];
        a.extend_from_slice(extra);
        flamingo(&a)
    };
    let (ok, stdout, err) = run(&[
        "--shots",
        "0,1",
        "--compare",
        int4.to_str().unwrap(),
        "--bootstrap",
        "200",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let rows = lines(&stdout);
    assert_eq!(rows.len(), 2, "{stdout}");
    for (r, shots) in rows.iter().zip([0, 1]) {
        assert_eq!(r["task"], "imagenet");
        assert_eq!(r["shots"], shots);
        let (a, b) = (r["a"].as_f64().unwrap(), r["b"].as_f64().unwrap());
        assert_eq!(r["model"]["mean"].as_f64().unwrap(), a);
        assert_eq!(r["compare"]["mean"].as_f64().unwrap(), b);
        assert!((r["difference"].as_f64().unwrap() - (b - a)).abs() < 1e-9);
        let ci = r["ci95"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
        assert_eq!(r["resamples"], 200);
        assert!(r["model"]["top5"].as_array().is_some());
    }
    // one file per shot count, in the published classification format
    for shots in [0, 1] {
        let p = tmp.path().join(format!("preds.{shots}shot.42.json"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let v = v.as_array().unwrap();
        assert_eq!(v.len(), 8);
        for x in v {
            assert!(x["id"].is_u64() && names.contains(&x["label"].as_str().unwrap()));
            assert_eq!(x["scores"].as_array().unwrap().len(), 4);
        }
    }
    // the same eval without --compare gives the same first scores
    let (ok, stdout, err) = run(&["--shots", "1"]);
    assert!(ok, "{err}");
    let solo = lines(&stdout);
    assert_eq!(solo[0]["mean"], rows[1]["model"]["mean"]);
}

/// `export-triton`: both kinds write their models (the gpu kind's configs
/// from the manifest, the graphs linked in); what Triton's onnxruntime
/// backend cannot run is refused before anything is written. (Triton
/// serves them in scripts/triton-check.sh.)
#[test]
fn export_triton_writes_both_kinds_and_refuses_what_triton_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-llama");
    export("tiny-llama", &model);
    let m = model.display().to_string();
    let repo = |name: &str| tmp.path().join(name).display().to_string();
    let (ok, out, err) = flamingo(&[
        "export-triton",
        "--model",
        &m,
        "--out",
        &repo("cpu"),
        "--kind",
        "cpu",
        "--json",
    ]);
    assert!(ok, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["models"], json!(["flamingo", "flamingo_stream"]));
    let cpu = tmp.path().join("cpu");
    assert!(cpu.join("flamingo/1/export/manifest.json").is_file());
    let cfg = std::fs::read_to_string(cpu.join("flamingo/config.pbtxt")).unwrap();
    assert!(cfg.contains("backend: \"python\"") && cfg.contains("max_batch_size: 8"));
    assert!(!cfg.contains("decoupled"));
    let stream = std::fs::read_to_string(cpu.join("flamingo_stream/config.pbtxt")).unwrap();
    assert!(stream.contains("decoupled: true"));
    assert!(stream.contains("../flamingo/1/export"));
    let py = std::fs::read_to_string(cpu.join("flamingo/1/model.py")).unwrap();
    assert!(py.contains("from flamingo.triton import CpuModel as TritonPythonModel"));

    let (ok, out, err) = flamingo(&[
        "export-triton",
        "--model",
        &m,
        "--out",
        &repo("gpu"),
        "--kind",
        "gpu",
        "--json",
        "--tensorrt",
        "--trt-fp16",
    ]);
    assert!(ok, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["models"].as_array().unwrap().len(), 6);
    let gpu = tmp.path().join("gpu");
    for g in ["vision_encoder", "resampler", "media_kv", "decoder"] {
        assert!(gpu.join(g).join(format!("1/{g}.onnx")).is_file(), "{g}");
        let cfg = std::fs::read_to_string(gpu.join(g).join("config.pbtxt")).unwrap();
        assert!(cfg.contains("backend: \"onnxruntime\"") && cfg.contains("KIND_GPU"));
        assert!(cfg.contains("precision_mode\" value: \"FP16\""), "{g}");
    }
    let dec = std::fs::read_to_string(gpu.join("decoder/config.pbtxt")).unwrap();
    assert_eq!(dec.matches("input_name: \"past_key_values.").count(), 8);
    assert!(
        !dec.contains("{ name: \"present."),
        "states are not outputs"
    );
    // the orchestrator reads the manifest and the tokenizer, not the graphs
    assert!(gpu
        .join("flamingo/1/export/tokenizer/tokenizer.json")
        .is_file());
    assert!(!gpu.join("flamingo/1/export/decoder.onnx").exists());

    // refused before anything is written
    // (tiny-mpt's int4 decoder takes GroupQueryAttention's in-place cache)
    let mpt = tmp.path().join("tiny-mpt");
    export("tiny-mpt", &mpt);
    let (int4f, int4) = (tmp.path().join("int4f"), tmp.path().join("int4"));
    for (w, src, out) in [("int4-flamingo", &model, &int4f), ("int4", &mpt, &int4)] {
        let (src, out) = (src.display().to_string(), out.display().to_string());
        let (ok, _, err) = flamingo(&["quantize", "--weights", w, &src, &out]);
        assert!(ok, "{err}");
    }
    for (args, want) in [
        (
            vec![
                "--model",
                &int4f.display().to_string() as &str,
                "--kind",
                "gpu",
            ],
            "own kernels",
        ),
        (
            vec![
                "--model",
                &int4.display().to_string() as &str,
                "--kind",
                "gpu",
            ],
            "--plain-kv-cache",
        ),
        (
            vec!["--model", &m, "--kind", "cpu", "--backend", "ort-cuda"],
            "tract or ort-cpu",
        ),
        (vec!["--model", &m, "--instances", "0"], "at least 1"),
        (
            vec!["--model", &m, "--max-tokens", "4", "--default-tokens", "8"],
            "--default-tokens",
        ),
        (
            vec![
                "--model",
                &tmp.path().join("nothing").display().to_string() as &str,
            ],
            "nothing",
        ),
    ] {
        let out = repo("refused");
        let mut a = vec!["export-triton", "--out", &out];
        a.extend(args.iter().copied());
        let (ok, _, err) = flamingo(&a);
        assert!(!ok && err.contains(want), "{a:?}: {err}");
        assert!(!tmp.path().join("refused").exists(), "{a:?} left output");
    }
    let (ok, _, err) = flamingo(&["export-triton", "--model", &m, "--out", &repo("cpu")]);
    assert!(!ok && err.contains("already exists"), "{err}");
}
