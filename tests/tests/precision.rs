//! Precision rewrites against the fp32 export: the ONNX reader round trip,
//! each variant's accuracy (logits cosine, greedy ids; one test per variant
//! and fixture, floors in `flamingo_tests::tolerance`), the fused and
//! in-place decoders and this runtime's kernels against their definitions.

use anyhow::{Context, Result};
use flamingo_contract::GraphRole;
use flamingo_graphs::onnx::{self, WriteOptions};
use flamingo_runtime::decoder::media_time;
use flamingo_runtime::{BackendKind, GenerateOptions, Media, Model, Pipeline, Request, Step};
use flamingo_tests::variant::{gptq_int4, quantized};
use flamingo_tests::*;
use ndarray::Array2;

#[test]
fn reading_an_export_back_and_writing_it_gives_the_same_bytes() -> Result<()> {
    let dir = exported("tiny-llama")?;
    let m = flamingo_contract::Manifest::load(&dir)?;
    let out = scratch().join("roundtrip");
    std::fs::create_dir_all(&out)?;
    for info in m.graphs.values() {
        let (g, opsets) = flamingo_graphs::onnx::read(&dir.join(&info.file))?;
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

per_variant!(logits_stay_close_to_fp32
    [FP16_TRACT, FP16_ORT, INT8_TRACT, INT8_ORT, INT8_NBITS, INT4, INT4_GPTQ, INT8_DYNAMIC]
    [tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
     tiny_llama_video = "tiny-llama-video", tiny_mosaic = "tiny-mosaic"]);
per_variant!(greedy_ids_match_fp32_where_the_margin_allows
    [FP16_TRACT, FP16_ORT]
    [tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
     tiny_mosaic = "tiny-mosaic"]);

/// Every case's full-prompt logits, from the PNGs, against fp32's on the
/// variant's backend: cosine at least the variant's floor.
fn logits_stay_close_to_fp32(fx: &str, v: Variant) -> Result<()> {
    let mut a = Model::load(&exported(fx)?, v.backend)?;
    let mut b = Model::load(&v.export(fx)?, v.backend)?;
    let floor = tolerance::logits_cosine(&v, fx);
    let (la, lb) = (case_logits(&mut a, fx)?, case_logits(&mut b, fx)?);
    assert!(!la.is_empty() && la.len() == lb.len());
    for ((name, la), (_, lb)) in la.iter().zip(lb) {
        let c = cosine(la, &lb)?;
        eprintln!(
            "{} {} {fx} {name}: logits cosine {c:.6}, max abs {:.3e}",
            v.name,
            v.backend,
            max_abs_diff(la, &lb)?
        );
        assert!(
            c >= floor,
            "{} {} {fx} {name}: cosine {c} < {floor}",
            v.name,
            v.backend
        );
    }
    Ok(())
}

per_variant!(vision_tokens_and_latents_stay_close_to_fp32
    [INT8_DYNAMIC]
    [tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
     tiny_llama_video = "tiny-llama-video", tiny_mosaic = "tiny-mosaic"]);

/// int8 compute's vision encoder and resampler on every fixture image
/// (and video) against fp32's: cosine of the vision tokens and of the
/// latents at least [`tolerance::INT8_COMPUTE_VISION_COSINE`].
fn vision_tokens_and_latents_stay_close_to_fp32(fx: &str, v: Variant) -> Result<()> {
    let mut a = Model::load(&exported(fx)?, v.backend)?;
    let mut b = Model::load(&v.export(fx)?, v.backend)?;
    let images: Vec<_> = std::fs::read_dir(fixture(fx).join("images"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    anyhow::ensure!(!images.is_empty(), "{fx}: no images");
    let media: Vec<Media> = if fx.ends_with("video") {
        vec![Media::Video(images)]
    } else {
        images.into_iter().map(Media::Image).collect()
    };
    let (ea, eb) = (a.encode(&media)?, b.encode(&media)?);
    let floor = tolerance::INT8_COMPUTE_VISION_COSINE;
    for (what, x, y) in [
        ("vision tokens", &ea.vision_tokens, &eb.vision_tokens),
        ("latents", &ea.latents, &eb.latents),
    ] {
        let c = cosine(x, y)?;
        eprintln!("{} {fx} {what}: cosine {c:.6}", v.name);
        assert!(c >= floor, "{} {fx} {what}: cosine {c} < {floor}", v.name);
    }
    Ok(())
}

/// Greedy ids equal fp32's where the reference's top-2 margin leaves room
/// for the variant's error.
fn greedy_ids_match_fp32_where_the_margin_allows(fx: &str, v: Variant) -> Result<()> {
    let mut pa = Pipeline::load(&exported(fx)?, v.backend)?;
    let mut pb = Pipeline::load(&v.export(fx)?, v.backend)?;
    let mut compared = 0;
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        let Some(g) = case.get("greedy").filter(|_| case.get("prompt").is_some()) else {
            continue;
        };
        if g["min_top2_margin"].as_f64().unwrap_or(0.0) <= tolerance::FP16_GREEDY_MARGIN {
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
            "{} {} {fx} {}",
            v.name, v.backend, case["name"]
        );
        compared += 1;
    }
    eprintln!(
        "{} {} {fx}: {compared} greedy cases compared",
        v.name, v.backend
    );
    Ok(())
}

/// Exports with ONNX Runtime contrib operators say so in the manifest, and
/// tract refuses them with a message saying what to run them on.
#[test]
fn onnx_runtime_only_exports_are_refused_by_tract_clearly() -> Result<()> {
    use flamingo_calibration::weights::WeightBits;
    for fx in FIXTURES {
        let dir = quantized(fx, WeightBits::Int4 { block_size: 32 })?;
        let err = Model::load(&dir, BackendKind::Tract)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("needs onnxruntime") && err.contains("--backend ort-cpu"),
            "{err}"
        );
        let b = Model::load(&dir, BackendKind::OrtCpu)?;
        assert_eq!(
            b.manifest.graph(GraphRole::Decoder)?.requires,
            Some(flamingo_contract::Requires::Onnxruntime)
        );
        assert_eq!(
            b.manifest.precision,
            flamingo_contract::Precision::Int4Weights
        );
    }
    Ok(())
}

/// ONNX Runtime's MatMulNBits on our packing (4 and 8 bits) equals our own
/// dequantization (odd block counts and a K that is not a multiple of the
/// block size).
#[test]
fn nbits_packing_is_what_onnx_runtime_reads() -> Result<()> {
    use flamingo_calibration::weights::{quantize_weights_opts, WeightBits};
    use flamingo_graphs::{DType, Dim, GraphBuilder, Tensor, WeightSource};
    use flamingo_runtime::BackendKind;

    struct W(Tensor);
    impl WeightSource for W {
        fn get(&self, _: &str) -> flamingo_graphs::Result<Tensor> {
            Ok(self.0.clone())
        }
        fn contains(&self, _: &str) -> bool {
            true
        }
    }
    for (k, n, bits, symmetric) in [
        (160usize, 24usize, 4u32, false),
        (40, 8, 4, false),
        (160, 24, 8, false),
        (40, 8, 8, false),
        (160, 24, 4, true),
        (40, 8, 8, true),
    ] {
        let w: Vec<f32> = (0..n * k)
            .map(|i| (((i * 7919) % 101) as f32 - 50.0) / 97.0)
            .collect();
        let mut b = GraphBuilder::new("mm");
        let x = b.input("x", DType::F32, vec![Dim::Fixed(2), Dim::Fixed(k as i64)]);
        let y = {
            let src = W(Tensor::from_f32(vec![n, k], &w));
            let mut s = b.scope(&src, "lin");
            flamingo_graphs::blocks::primitives::linear(&mut s, x, k, n, false)?
        };
        b.output(
            y,
            "y",
            DType::F32,
            vec![Dim::Fixed(2), Dim::Fixed(n as i64)],
        );
        let kind = if bits == 4 {
            WeightBits::Int4 { block_size: 32 }
        } else {
            WeightBits::Int8Ort { block_size: 32 }
        };
        let opts = flamingo_calibration::weights::BlockOptions {
            symmetric,
            ..Default::default()
        };
        let mut g =
            quantize_weights_opts(&b.finish()?, kind, None, &opts).map_err(anyhow::Error::msg)?;
        // exact float arithmetic, to check the packing alone (exports use
        // accuracy_level 4, which quantises the activations too)
        for n in &mut g.nodes {
            n.attrs.retain(|(k, _)| k != "accuracy_level");
        }
        // our dequantization of the packed weight
        let get = |name: &str| {
            g.initializers
                .iter()
                .find(|(n, _)| n.ends_with(name))
                .map(|(_, t)| t.clone())
        };
        let packed = get(".qweight")
            .context("qweight")?
            .bytes()
            .map_err(anyhow::Error::msg)?;
        let scales = get(".scales")
            .context("scales")?
            .to_f32_vec()
            .map_err(anyhow::Error::msg)?;
        // symmetric blocks carry no zero points: ONNX Runtime's default
        // is the mid-code, 2^(bits-1)
        let zps = match get(".zero_points") {
            Some(z) if !symmetric => z.bytes().map_err(anyhow::Error::msg)?.to_vec(),
            None if symmetric => {
                let mid = 1u8 << (bits - 1);
                let per_byte = (8 / bits) as usize;
                let byte = (0..per_byte).fold(0u8, |b, i| b | mid << (i as u32 * bits));
                vec![byte; n * k.div_ceil(32).div_ceil(per_byte)]
            }
            _ => anyhow::bail!(
                "zero points present: {}, symmetric: {symmetric}",
                !symmetric
            ),
        };
        let blocks = k.div_ceil(32);
        let per_byte = (8 / bits) as usize;
        let mask = ((1u32 << bits) - 1) as u8;
        let deq = |r: usize, kk: usize| {
            let (bl, i) = (kk / 32, kk % 32);
            let byte = packed[(r * blocks + bl) * 32 / per_byte + i / per_byte];
            let q = (byte >> ((i % per_byte) as u32 * bits)) & mask;
            let zb = zps[r * blocks.div_ceil(per_byte) + bl / per_byte];
            let zp = (zb >> ((bl % per_byte) as u32 * bits)) & mask;
            (q as f32 - zp as f32) * scales[r * blocks + bl]
        };
        let xs: Vec<f32> = (0..2 * k).map(|i| ((i % 13) as f32 - 6.0) / 5.0).collect();
        let dir = scratch().join(format!("nbits-{k}-{bits}-{symmetric}"));
        std::fs::create_dir_all(&dir)?;
        let opts = onnx::WriteOptions {
            extra_opsets: vec![("com.microsoft".into(), 1)],
            ..Default::default()
        };
        let written = onnx::write(&g, &dir, "mm.onnx", &opts, &mut |_| {})?;
        let be = BackendKind::OrtCpu.create()?;
        let mut sess = be.load(&written.model)?;
        let x = ndarray::ArrayD::from_shape_vec(vec![2, k], xs.clone())?;
        let out = sess
            .run(vec![("x", flamingo_runtime::ValueRef::F32(x.view()))])?
            .remove("y")
            .context("y")?
            .into_f32("y")?;
        for row in 0..2 {
            for col in 0..n {
                let want: f32 = (0..k).map(|kk| xs[row * k + kk] * deq(col, kk)).sum();
                let got = out[[row, col]];
                assert!(
                    (got - want).abs() <= tolerance::PACKING_REL * (1.0 + want.abs()),
                    "K {k}: [{row},{col}] {got} vs {want}"
                );
            }
        }
    }
    Ok(())
}

/// The ONNX Runtime fusions (MultiHeadAttention over the KV cache and the
/// media K/V, Gelu, SkipLayerNormalization) change nothing beyond float32
/// round-off: full prompts, padded batches decoding over the cache, and
/// candidate scores, against the unfused fp32 export.
#[test]
fn ort_fusions_equal_the_unfused_decoder() -> Result<()> {
    use flamingo_calibration::ort_fuse::fuse_decoder;
    use flamingo_runtime::BackendKind;
    let backend = BackendKind::OrtCpu;
    for fx in FIXTURES {
        let m = flamingo_contract::Manifest::load(&exported(fx)?)?;
        let d = &m.model.decoder;
        let counts = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = counts.clone();
        let fused = converted(fx, "ort-fused", &move |role, g| {
            if role != GraphRole::Decoder {
                return Ok(None);
            }
            let (f, n) = fuse_decoder(g);
            if let Ok(mut c) = seen.lock() {
                *c = Some(n);
            }
            Ok(Some(f))
        })?;
        let n = counts
            .lock()
            .ok()
            .and_then(|c| *c)
            .context("fusion counts")?;
        eprintln!("{fx}: {n:?}");
        // ALiBi decoders fuse every self-attention; rotary ones keep theirs
        let want_self = if d.position == flamingo_contract::Position::Alibi {
            d.num_layers
        } else {
            0
        };
        assert_eq!(n.self_attention, want_self, "{fx}");
        assert_eq!(n.cross_attention, d.gated_layers.len(), "{fx}");
        assert!(n.gelu >= d.gated_layers.len(), "{fx}: {n:?}");
        assert!(n.skip_layer_norm >= d.gated_layers.len(), "{fx}: {n:?}");

        let mut a = Model::load(&exported(fx)?, backend)?;
        let mut b = Model::load(&fused, backend)?;
        for ((name, la), (_, lb)) in case_logits(&mut a, fx)?
            .iter()
            .zip(case_logits(&mut b, fx)?)
        {
            let (diff, scale) = (
                max_abs_diff(la, &lb)?,
                la.iter().fold(0f32, |m, v| m.max(v.abs())),
            );
            eprintln!("fused {fx} {name}: max abs diff {diff:.2e} of {scale:.2}");
            assert!(
                diff <= tolerance::ROUND_OFF_REL * scale.max(1.0),
                "{fx} {name}: {diff}"
            );
        }
        let reqs: Vec<Request> = held_out_requests(fx)?
            .into_iter()
            .take(3)
            .map(|mut r| {
                r.options.max_new_tokens = 6;
                r
            })
            .collect();
        let mut pa = Pipeline::load(&exported(fx)?, backend)?;
        let mut pb = Pipeline::load(&fused, backend)?;
        for (x, y) in pa
            .generate_batch(&reqs)
            .into_iter()
            .zip(pb.generate_batch(&reqs))
        {
            assert_eq!(
                x?.sequences[0].generated_ids, y?.sequences[0].generated_ids,
                "{fx}"
            );
        }
        let r = &reqs[0];
        let cands = vec![" a dog".to_string(), " the sea and a boat".to_string()];
        let (sa, sb) = (
            pa.score(&r.prompt, &r.media, &cands)?,
            pb.score(&r.prompt, &r.media, &cands)?,
        );
        for (x, y) in sa.iter().zip(&sb) {
            assert!(
                (x.logprob_sum - y.logprob_sum).abs() <= 1e-3,
                "{fx}: {x:?} vs {y:?}"
            );
        }
        // class scoring over the shared prefix: several tokens per row over
        // the cache on the plain decoder, a token per step on the fused
        // one when its cache is updated in place
        let (ca, cb) = (
            pa.score_classes(&r.prompt, &r.media, &cands)?,
            pb.score_classes(&r.prompt, &r.media, &cands)?,
        );
        for (x, y) in ca.iter().zip(&cb) {
            assert_eq!(x.num_tokens, y.num_tokens);
            assert!(
                (x.logprob_sum - y.logprob_sum).abs() <= 1e-3,
                "{fx} classes: {x:?} vs {y:?}"
            );
        }
    }
    Ok(())
}

/// The gated cross-attention's constant output gates (`tanh(attn_gate)`,
/// `tanh(ff_gate)`) fold into the int4 block scales of `to_out` and the
/// feed-forward's last projection: the fused quantised decoder equals the
/// unfused one (both with float32 compute, `accuracy_level` 0, so that no
/// activation quantisation hides a difference).
#[test]
fn output_gates_fold_into_the_int4_block_scales() -> Result<()> {
    use flamingo_calibration::weights::{
        quantize_decoder, quantize_weights_opts, BlockOptions, WeightBits,
    };
    use flamingo_graphs::{Attr, Graph};
    use flamingo_runtime::BackendKind;
    let bits = WeightBits::Int4 { block_size: 32 };
    let opts = BlockOptions::default();
    fn float_compute(mut g: Graph) -> Graph {
        for n in g.nodes.iter_mut().filter(|n| n.op_type == "MatMulNBits") {
            for (k, a) in n.attrs.iter_mut() {
                if k == "accuracy_level" {
                    *a = Attr::Int(0);
                }
            }
        }
        g
    }
    for fx in ["tiny-mpt", "tiny-neox", "tiny-mosaic"] {
        let m = flamingo_contract::Manifest::load(&exported(fx)?)?;
        let gated = m.model.decoder.gated_layers.len();
        let unfused = converted(fx, "int4-unfused-f32-compute", &move |role, g| {
            (role == GraphRole::Decoder)
                .then(|| quantize_weights_opts(g, bits, None, &opts).map(float_compute))
                .transpose()
        })?;
        let fused = converted(fx, "int4-fused-f32-compute", &move |role, g| {
            if role != GraphRole::Decoder {
                return Ok(None);
            }
            let q = quantize_weights_opts(g, bits, None, &opts)?;
            let (_, n) = flamingo_calibration::ort_fuse::fuse_decoder(&q);
            if n.gates != 2 * gated {
                return Err(format!("{} gates folded, {} expected", n.gates, 2 * gated));
            }
            quantize_decoder(g, bits, None, &opts).map(|g| Some(float_compute(g)))
        })?;
        let (mut a, mut b) = (
            Model::load(&unfused, BackendKind::OrtCpu)?,
            Model::load(&fused, BackendKind::OrtCpu)?,
        );
        for ((name, la), (_, lb)) in case_logits(&mut a, fx)?
            .iter()
            .zip(case_logits(&mut b, fx)?)
        {
            let d = max_abs_diff(la, &lb)?;
            let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
            eprintln!("gates folded {fx} {name}: max abs diff {d:.2e} of {scale:.2}");
            assert!(
                d <= tolerance::ROUND_OFF_REL * scale.max(1.0),
                "{fx} {name}: {d}"
            );
        }
    }
    Ok(())
}

/// `[from, to)` of a one-row prompt as a decoder call keeping `keep` logits.
fn span(ids: &[i64], mt: &[i64], from: usize, to: usize, keep: usize) -> Result<Step> {
    let row = |v: &[i64]| Array2::from_shape_vec((1, v.len()), v.to_vec());
    Ok(Step {
        input_ids: row(&ids[from..to])?,
        attention_mask: Array2::ones((1, to)),
        position_ids: row(&(from as i64..to as i64).collect::<Vec<_>>())?,
        media_time: row(&mt[from..to])?,
        keep,
    })
}

/// The fused ALiBi decoder keeps its KV cache in buffers that each step
/// writes in place (`kv_update: in-place`, ONNX Runtime on the CPU): a prompt
/// in two chunks, steps past the reserved size (the buffers grow), a clone
/// of the cache decoding apart from the original (copy on write), a rewind,
/// the host read-back and beam search all equal the unfused decoder's plain
/// cache; several tokens over a cache in a batch are a clear error.
#[test]
fn in_place_kv_buffers_decode_like_the_plain_cache() -> Result<()> {
    use flamingo_runtime::BackendKind;
    let fx = "tiny-mpt";
    let fused = converted(fx, "ort-fused-in-place", &|role, g| {
        Ok((role == GraphRole::Decoder).then(|| flamingo_calibration::ort_fuse::fuse_decoder(g).0))
    })?;
    let m = flamingo_contract::Manifest::load(&fused)?;
    assert_eq!(
        m.graph(GraphRole::Decoder)?.kv_update,
        Some(flamingo_contract::KvUpdate::InPlace)
    );
    let plain = flamingo_contract::Manifest::load(&exported(fx)?)?;
    assert_eq!(plain.graph(GraphRole::Decoder)?.kv_update, None);
    let case = cases(fx)?["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .find(|c| c["greedy"]["output_ids"].is_array() && c.get("images").is_some())
        .cloned()
        .context("a case with images and a greedy continuation")?;
    // the prompt and its greedy continuation
    let ids: Vec<i64> = case["greedy"]["output_ids"]
        .as_array()
        .context("ids")?
        .iter()
        .filter_map(|v| v.as_i64())
        .collect();
    let media: Vec<Media> = indices(&case["images"])
        .iter()
        .map(|i| Media::Image(fixture(fx).join(format!("images/img{i}.png"))))
        .collect();
    let (n, mt) = (ids.len(), media_time(&ids, 401));
    assert!(n > 8, "{n} tokens");
    let run = |dir: &Result<std::path::PathBuf>,
               in_place: bool|
     -> Result<Vec<(String, ndarray::ArrayD<f32>)>> {
        let dir = dir.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut model = Model::load(dir, BackendKind::OrtCpu)?;
        let enc = model.encode(&media)?;
        let kv = model.media_kv(enc.latents)?;
        let mut out = Vec::new();
        let mut cache = model.empty_cache(1);
        cache.reserve(4);
        let h = n / 2;
        out.push((
            "chunk 1".into(),
            model.decode(&span(&ids, &mt, 0, h, h)?, &kv, &mut cache)?,
        ));
        let first = cache.capacity();
        let c2 = span(&ids, &mt, h, n - 3, n - 3 - h)?;
        out.push(("chunk 2".into(), model.decode(&c2, &kv, &mut cache)?));
        assert!(cache.is_resident());
        let one = |t: usize| span(&ids, &mt, t, t + 1, 1);
        out.push(("step".into(), model.decode(&one(n - 3)?, &kv, &mut cache)?));
        // a clone takes another token at the same position: the original
        // must not see it
        let mut twin = cache.clone();
        out.push(("next".into(), model.decode(&one(n - 2)?, &kv, &mut cache)?));
        let mut other = one(n - 2)?;
        other.input_ids[[0, 0]] = ids[1];
        model.decode(&other, &kv, &mut twin)?;
        out.push(("last".into(), model.decode(&one(n - 1)?, &kv, &mut cache)?));
        cache.truncate(n - 1)?;
        out.push((
            "last, rewound".into(),
            model.decode(&one(n - 1)?, &kv, &mut cache)?,
        ));
        assert_eq!((cache.len(), twin.len()), (n, n - 1));
        // the buffers grew past the reserve (in steps of 8 positions), or none
        match (in_place, first, cache.capacity()) {
            (true, Some(a), Some(b)) => assert!(a == h.next_multiple_of(8) && b >= n && b > a),
            (false, None, None) => {}
            other => panic!("in place, capacities: {other:?}"),
        }
        cache.to_host()?;
        assert_eq!(cache.host_layers().context("host")?[0].0.shape()[2], n);
        out.push((
            "host keys".into(),
            cache.host_layers().context("host")?[0].0.clone(),
        ));
        Ok(out)
    };
    // `quantize --plain-kv-cache`: MultiHeadAttention over a concatenated cache
    let mha = converted(fx, "ort-fused-plain-kv", &|role, g| {
        Ok((role == GraphRole::Decoder)
            .then(|| flamingo_calibration::ort_fuse::fuse_decoder_with(g, false).0))
    })?;
    let mm = flamingo_contract::Manifest::load(&mha)?;
    assert_eq!(mm.graph(GraphRole::Decoder)?.kv_update, None);
    let a = run(&exported(fx), false)?;
    let b = run(&Ok(fused.clone()), true)?;
    let c = run(&Ok(mha), false)?;
    for (((name, x), (_, y)), (_, z)) in a.iter().zip(&b).zip(&c) {
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, dm) = (max_abs_diff(x, y)?, max_abs_diff(x, z)?);
        eprintln!("in-place {name}: max abs diff {d:.2e} (plain fused {dm:.2e}) of {scale:.2}");
        assert!(
            d <= tolerance::ROUND_OFF_REL * scale.max(1.0),
            "{name}: {d}"
        );
        assert!(
            dm <= tolerance::ROUND_OFF_REL * scale.max(1.0),
            "{name}, plain fused: {dm}"
        );
    }
    assert!(max_abs_diff(&b[4].1, &b[5].1)? <= tolerance::SAME_VALUES);

    let mut model = Model::load(&fused, BackendKind::OrtCpu)?;
    let latents = model.encode(&media)?.latents;
    let kv = model.media_kv(latents)?;
    let two = kv.select(&[0, 0]);
    let rows = |v: &[i64]| Array2::from_shape_fn((2, v.len()), |(_, j)| v[j]);
    let mut cache = model.empty_cache(2);
    let prompt = Step {
        input_ids: rows(&ids[..n - 2]),
        attention_mask: Array2::ones((2, n - 2)),
        position_ids: rows(&(0..n as i64 - 2).collect::<Vec<_>>()),
        media_time: rows(&mt[..n - 2]),
        keep: 1,
    };
    model.decode(&prompt, &two, &mut cache)?;
    let more = Step {
        input_ids: rows(&ids[n - 2..]),
        attention_mask: Array2::ones((2, n)),
        position_ids: rows(&[n as i64 - 2, n as i64 - 1]),
        media_time: rows(&mt[n - 2..]),
        keep: 1,
    };
    let e = model
        .decode(&more, &two, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("one row at a time"), "{e}");

    let req = Request {
        prompt: "<image>A picture of".into(),
        media: media[..1].to_vec(),
        options: GenerateOptions {
            max_new_tokens: 5,
            num_beams: 3,
            ..Default::default()
        },
    };
    let x = Pipeline::load(&exported(fx)?, BackendKind::OrtCpu)?.generate(&req)?;
    let y = Pipeline::load(&fused, BackendKind::OrtCpu)?.generate(&req)?;
    assert_eq!(x.sequences[0].generated_ids, y.sequences[0].generated_ids);
    Ok(())
}

/// Integer attributes, packed weight and scales of a quantised product.
type Operands<const A: usize> = ([usize; A], std::sync::Arc<Vec<u8>>, Vec<f32>);

/// This runtime's quantised product `node` of `g`: its integer attributes
/// `keys`, and its packed weight and scales (initializers of `g`).
fn kernel_operands<const A: usize>(
    g: &flamingo_graphs::Graph,
    node: &flamingo_graphs::Node,
    keys: [&str; A],
) -> Result<Operands<A>, String> {
    use flamingo_graphs::Attr;
    let mut attrs = [0; A];
    for (v, key) in attrs.iter_mut().zip(keys) {
        *v = match node.attrs.iter().find(|(a, _)| a == key) {
            Some((_, Attr::Int(x))) => *x as usize,
            _ => return Err(format!("{}: no {key}", node.name)),
        };
    }
    let init = |i: usize| {
        g.initializers
            .iter()
            .find(|(name, _)| *name == node.inputs[i])
            .map(|(_, t)| t)
            .ok_or(format!("{}: input {i} is no initializer", node.name))
    };
    Ok((attrs, init(1)?.bytes()?, init(2)?.to_f32_vec()?))
}

/// The int8-flamingo decoder with every `MatMulInt8` replaced by a float32
/// `MatMul` over its weights, unpacked here from the documented layout
/// (tile, step, channel, offset) and dequantised.
fn int8_kernels_as_float(g: &flamingo_graphs::Graph) -> Result<flamingo_graphs::Graph, String> {
    use flamingo_graphs::Tensor;
    use flamingo_runtime::int8_matmul::{KSTEP, OP, TILE};
    let mut out = g.clone();
    for node in out.nodes.iter_mut().filter(|n| n.op_type == OP) {
        let ([k, n], codes, scales) = kernel_operands(g, node, ["K", "N"])?;
        let steps = k.div_ceil(KSTEP);
        // [K, N]: w[i, c] = code(c, i) · scale(c)
        let mut w = vec![0f32; k * n];
        for c in 0..n {
            for i in 0..k {
                let at = (((c / TILE) * steps + i / KSTEP) * TILE + c % TILE) * KSTEP + i % KSTEP;
                w[i * n + c] = codes[at] as i8 as f32 * scales[c];
            }
        }
        let name = format!("{}.float", node.inputs[1]);
        out.initializers
            .push((name.clone(), Tensor::from_f32(vec![k, n], &w)));
        node.op_type = "MatMul".into();
        node.domain = String::new();
        node.inputs = vec![node.inputs[0].clone(), name];
        node.attrs.clear();
    }
    Ok(out)
}

/// `--weights int8-flamingo`: this runtime's int8 kernel inside ONNX
/// Runtime (prompt rows four at a time and the remainder, a decode step,
/// beam rows, the KV cache in place) equals float32 products over the same
/// weights, and stays close to fp32.
#[test]
fn the_int8_kernel_equals_float32_products_over_its_weights() -> Result<()> {
    use flamingo_calibration::weights::WeightBits;
    use flamingo_runtime::BackendKind;
    for fx in FIXTURES {
        let dir = quantized(fx, WeightBits::Int8Flamingo)?;
        let m = flamingo_contract::Manifest::load(&dir)?;
        let dec = m.graph(GraphRole::Decoder)?;
        assert_eq!(dec.requires, Some(flamingo_contract::Requires::Onnxruntime));
        let err = Model::load(&dir, BackendKind::Tract)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--backend ort-cpu"), "{err}");
        let float = converted(fx, "int8-flamingo-as-float", &|role, g| {
            if role != GraphRole::Decoder {
                return Ok(None);
            }
            let q = flamingo_calibration::weights::quantize_decoder(
                g,
                WeightBits::Int8Flamingo,
                None,
                &Default::default(),
            )?;
            let kernels = q
                .nodes
                .iter()
                .filter(|n| n.op_type == flamingo_runtime::int8_matmul::OP)
                .count();
            if kernels == 0 {
                return Err("no MatMulInt8".into());
            }
            int8_kernels_as_float(&q).map(Some)
        })?;
        let mut fp32 = Model::load(&exported(fx)?, BackendKind::OrtCpu)?;
        let mut a = Model::load(&float, BackendKind::OrtCpu)?;
        let mut b = Model::load(&dir, BackendKind::OrtCpu)?;
        for (((name, lf), (_, la)), (_, lb)) in case_logits(&mut fp32, fx)?
            .iter()
            .zip(case_logits(&mut a, fx)?)
            .zip(case_logits(&mut b, fx)?)
        {
            let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (d, c) = (max_abs_diff(&la, &lb)?, cosine(lf, &lb)?);
            eprintln!(
                "int8-flamingo {fx} {name}: max abs diff {d:.2e} of {scale:.2} against float32 \
                 products; logits cosine {c:.6} against fp32"
            );
            assert!(
                d <= tolerance::ROUND_OFF_REL * scale.max(1.0),
                "{fx} {name}: {d}"
            );
            assert!(
                c >= tolerance::INT8_KERNEL_COSINE,
                "{fx} {name}: cosine {c}"
            );
        }
        let case = cases(fx)?["cases"]
            .as_array()
            .context("cases")?
            .iter()
            .find(|c| c.get("images").is_some() || c.get("frames").is_some())
            .cloned()
            .context("a case with media")?;
        let png = |i: &usize| fixture(fx).join(format!("images/img{i}.png"));
        let media: Vec<Media> = match case.get("frames") {
            Some(f) => vec![Media::Video(indices(f).iter().map(png).collect())],
            None => indices(&case["images"])
                .iter()
                .map(png)
                .map(Media::Image)
                .collect(),
        };
        for beams in [1, 3] {
            let req = Request {
                prompt: "<image>A picture of".into(),
                media: media[..1].to_vec(),
                options: GenerateOptions {
                    max_new_tokens: 6,
                    num_beams: beams,
                    ..Default::default()
                },
            };
            let x = Pipeline::load(&float, BackendKind::OrtCpu)?.generate(&req)?;
            let y = Pipeline::load(&dir, BackendKind::OrtCpu)?.generate(&req)?;
            assert_eq!(
                x.sequences[0].generated_ids, y.sequences[0].generated_ids,
                "{fx}, {beams} beams"
            );
        }
    }
    Ok(())
}

/// One node of a definition: its name, operator, inputs and attributes.
type DefNode<'a> = (
    &'a str,
    &'a str,
    Vec<String>,
    Vec<(String, flamingo_graphs::Attr)>,
);

/// The int4-flamingo decoder with every `MatMulInt4` replaced by its
/// definition in standard operators: the input quantised per block of 32
/// (`Round(x · 127 / max |x|)`, ties to even, times `max |x| / 127`), then a
/// float32 `MatMul` over the weights unpacked here from the documented
/// layout (tile, block, step, channel, nibble) and dequantised.
fn int4_kernels_as_float(g: &flamingo_graphs::Graph) -> Result<flamingo_graphs::Graph, String> {
    use flamingo_graphs::{Attr, Node, Tensor};
    use flamingo_runtime::int4_matmul::{BLOCK, OP, TILE, TILE_BLOCK_BYTES};
    let mut out = g.clone();
    out.nodes.clear();
    let node = |name: String, op: &str, inputs: Vec<String>, output: &str, attrs| Node {
        name,
        op_type: op.into(),
        domain: String::new(),
        inputs,
        outputs: vec![output.to_string()],
        attrs,
        keep_fp32: false,
    };
    for n in &g.nodes {
        if n.op_type != OP {
            out.nodes.push(n.clone());
            continue;
        }
        let ([k, cols, bs], packed, scales) = kernel_operands(g, n, ["K", "N", "block_size"])?;
        if k % BLOCK != 0 {
            return Err(format!("{}: K = {k} is not whole blocks", n.name));
        }
        let (blocks, scale_blocks) = (k / BLOCK, k.div_ceil(bs));
        // [K, N]: w[i, c] = (code(c, i) − 8) · scale(c, block of i)
        let mut w = vec![0f32; k * cols];
        for c in 0..cols {
            for i in 0..k {
                let (b, o) = (i / BLOCK, i % BLOCK);
                let tb = (c / TILE) * blocks + b;
                let byte = packed[tb * TILE_BLOCK_BYTES + (o / 8) * 32 + (c % TILE) * 4 + o % 4];
                let code = if o % 8 < 4 { byte & 15 } else { byte >> 4 };
                let sb = (c / TILE) * scale_blocks + i / bs;
                w[i * cols + c] = (code as f32 - 8.0) * scales[sb * TILE + c % TILE];
            }
        }
        let p = format!("{}/ref", n.name);
        let v = |s: &str| format!("{p}/{s}");
        let consts: [(&str, Tensor); 4] = [
            ("w", Tensor::from_f32(vec![k, cols], &w)),
            (
                "blocks",
                Tensor::from_i64(vec![3], &[-1, blocks as i64, BLOCK as i64]),
            ),
            ("127", Tensor::from_f32(vec![], &[127.0])),
            ("tiny", Tensor::from_f32(vec![], &[1e-30])),
        ];
        for (name, t) in consts {
            out.initializers.push((v(name), t));
        }
        let x = n.inputs[0].clone();
        let steps: Vec<DefNode> = vec![
            ("shape", "Shape", vec![x.clone()], vec![]),
            ("xb", "Reshape", vec![x, v("blocks")], vec![]),
            ("abs", "Abs", vec![v("xb")], vec![]),
            (
                "amax",
                "ReduceMax",
                vec![v("abs")],
                vec![
                    ("axes".into(), Attr::Ints(vec![-1])),
                    ("keepdims".into(), Attr::Int(1)),
                ],
            ),
            ("safe", "Max", vec![v("amax"), v("tiny")], vec![]),
            ("inv", "Div", vec![v("127"), v("safe")], vec![]),
            ("scaled", "Mul", vec![v("xb"), v("inv")], vec![]),
            ("codes", "Round", vec![v("scaled")], vec![]),
            ("sa", "Div", vec![v("amax"), v("127")], vec![]),
            ("deq", "Mul", vec![v("codes"), v("sa")], vec![]),
            ("xq", "Reshape", vec![v("deq"), v("shape")], vec![]),
        ];
        for (name, op, inputs, attrs) in steps {
            out.nodes.push(node(v(name), op, inputs, &v(name), attrs));
        }
        out.nodes.push(node(
            n.name.clone(),
            "MatMul",
            vec![v("xq"), v("w")],
            &n.outputs[0],
            vec![],
        ));
    }
    Ok(out)
}

/// `--weights int4-flamingo`: this runtime's int4 kernel inside ONNX Runtime
/// (prompt rows four at a time and the remainder, a decode step, beam rows,
/// the KV cache in place, folded gates, the head) against its definition
/// written in standard operators over the same weights, and against ONNX
/// Runtime's `MatMulNBits` with the same quantisation (symmetric blocks of
/// 32, 64 or 128, int8 activations per 32). The kernel equals the definition
/// exactly (see `int4_matmul`'s unit tests); in a network, summation-order
/// round-off upstream moves a few activations across a rounding boundary of
/// their int8 grid, so the logits agree to a fraction of a percent, not to
/// round-off.
#[test]
fn the_int4_kernel_equals_its_definition_over_its_weights() -> Result<()> {
    use flamingo_calibration::weights::{quantize_decoder, BlockOptions, WeightBits};
    use flamingo_runtime::BackendKind;
    let head4 = BlockOptions {
        head_bits: 4,
        ..Default::default()
    };
    let nbits = BlockOptions {
        symmetric: true,
        ..head4
    };
    // every scale-block size on some fixture (LLaMA's 160-wide MLP: a
    // partial block of 64)
    for (fx, bs) in FIXTURES.into_iter().zip([32, 128, 64, 32, 64]) {
        let kind = WeightBits::Int4Flamingo { block_size: bs };
        let ours = converted(fx, &format!("int4-flamingo-{bs}-head4"), &|role, g| {
            if role != GraphRole::Decoder {
                return Ok(None);
            }
            let q = quantize_decoder(g, kind, None, &head4)?;
            let count = |op: &str| q.nodes.iter().filter(|n| n.op_type == op).count();
            // every product in the kernel, the head included
            let left = count("MatMulNBits") + count(flamingo_runtime::int8_matmul::OP);
            if count(flamingo_runtime::int4_matmul::OP) == 0 || left > 0 {
                return Err(format!("{left} products outside MatMulInt4"));
            }
            Ok(Some(q))
        })?;
        let float = converted(fx, &format!("int4-flamingo-{bs}-as-float"), &|role, g| {
            if role != GraphRole::Decoder {
                return Ok(None);
            }
            let q = quantize_decoder(g, kind, None, &head4)?;
            int4_kernels_as_float(&q).map(Some)
        })?;
        let ort_int4 = converted(fx, &format!("int4-symmetric-{bs}-head4"), &|role, g| {
            (role == GraphRole::Decoder)
                .then(|| quantize_decoder(g, WeightBits::Int4 { block_size: bs }, None, &nbits))
                .transpose()
        })?;
        let m = flamingo_contract::Manifest::load(&ours)?;
        assert_eq!(
            m.graph(GraphRole::Decoder)?.requires,
            Some(flamingo_contract::Requires::Onnxruntime)
        );
        let err = Model::load(&ours, BackendKind::Tract)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--backend ort-cpu"), "{err}");
        let logits = |dir: &std::path::Path| -> Result<Vec<(String, ndarray::ArrayD<f32>)>> {
            case_logits(&mut Model::load(dir, BackendKind::OrtCpu)?, fx)
        };
        let (fp32, def, nb, ours_l) = (
            logits(&exported(fx)?)?,
            logits(&float)?,
            logits(&ort_int4)?,
            logits(&ours)?,
        );
        for (((name, lf), (_, ld)), ((_, ln), (_, lo))) in
            fp32.iter().zip(&def).zip(nb.iter().zip(&ours_l))
        {
            let scale = ld.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(ld, lo)?;
            let (c_def, c_ours, c_nb) = (cosine(ld, lo)?, cosine(lf, lo)?, cosine(lf, ln)?);
            eprintln!(
                "int4-flamingo {fx} (blocks of {bs}) {name}: against its definition max abs diff {d:.2e} of \
                 {scale:.2}, cosine {c_def:.6}; logits cosine against fp32 {c_ours:.6} \
                 (MatMulNBits {c_nb:.6})"
            );
            assert!(
                d <= tolerance::INT4_DEFINITION_REL * scale.max(1.0),
                "{fx} {name}: {d}"
            );
            assert!(
                c_def >= tolerance::INT4_DEFINITION_COSINE,
                "{fx} {name}: cosine to the definition {c_def}"
            );
            // measured: MPT (32) >= 0.988, NeoX (128) >= 0.981, LLaMA (64)
            // >= 0.965, its video (32) >= 0.979: as MatMulNBits
            let floor = tolerance::logits_cosine_of("int4-flamingo", fx);
            assert!(c_ours >= floor, "{fx} {name}: cosine {c_ours}");
            assert!(
                c_ours >= c_nb - tolerance::INT4_FLAMINGO_VS_NBITS,
                "{fx} {name}: cosine {c_ours} against MatMulNBits' {c_nb}"
            );
        }
        // generation through the kernel (a prompt, beam rows, steps) scores
        // its tokens as the definition's graph does
        let png = fixture(fx).join("images/img0.png");
        for beams in [1, 3] {
            let req = Request {
                prompt: "<image>A picture of".into(),
                media: vec![Media::Image(png.clone())],
                options: GenerateOptions {
                    max_new_tokens: 6,
                    num_beams: beams,
                    ..Default::default()
                },
            };
            let x = Pipeline::load(&float, BackendKind::OrtCpu)?.generate(&req)?;
            let y = Pipeline::load(&ours, BackendKind::OrtCpu)?.generate(&req)?;
            eprintln!(
                "int4-flamingo {fx} {beams} beams: {:?} (definition {:?})",
                y.sequences[0].generated_ids, x.sequences[0].generated_ids
            );
        }
    }
    Ok(())
}

/// The fastest int4 setting (`--block-size 128 --symmetric --head-bits 4`,
/// GPTQ): what it costs in accuracy, measured against fp32.
#[test]
fn int4_speed_setting_stays_close_with_gptq() -> Result<()> {
    use flamingo_calibration::weights::BlockOptions;
    use flamingo_runtime::BackendKind;
    let fast = BlockOptions {
        symmetric: true,
        head_bits: 4,
        ..Default::default()
    };
    for fx in FIXTURES {
        let mut a = Model::load(&exported(fx)?, BackendKind::OrtCpu)?;
        let mut b = Model::load(&gptq_int4(fx, 128, &fast)?, BackendKind::OrtCpu)?;
        for ((name, la), (_, lb)) in case_logits(&mut a, fx)?
            .iter()
            .zip(case_logits(&mut b, fx)?)
        {
            let c = cosine(la, &lb)?;
            eprintln!("int4 speed setting ort-cpu {fx} {name}: logits cosine {c:.6}");
            // measured: MPT >= 0.990, NeoX >= 0.987, LLaMA >= 0.980 (blocks of
            // 128 span whole rows of these 64-160-wide matrices)
            let floor = tolerance::logits_cosine_of("int4-fastest-gptq", fx);
            assert!(c >= floor, "{fx} {name}: int4 speed-setting cosine {c}");
        }
    }
    Ok(())
}
