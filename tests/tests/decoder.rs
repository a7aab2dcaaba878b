//! The cross-attention decoder against the reference (FLAMINGO.md sections
//! 5-6): full-prompt logits, incremental decoding with the KV cache equal to
//! a full pass, and per-step greedy scores, on every backend.

use anyhow::{Context, Result};
use flamingo_runtime::decoder::{media_time, position_ids};
use flamingo_runtime::{BackendKind, MediaKv, Model, Step};
use flamingo_tests::*;
use ndarray::{concatenate, Array2, ArrayD, Axis};

/// The media K/V of a case from the reference pixels.
fn case_media(model: &mut Model, exp: &Expected, case: &serde_json::Value) -> Result<MediaKv> {
    let px = exp.get("pixel_values")?;
    let (idx, t, f) = match case.get("frames") {
        Some(fr) => {
            let fr = indices(fr);
            let n = fr.len();
            (fr, 1, n)
        }
        None => {
            let im = indices(&case["images"]);
            let n = im.len();
            (im, n, 1)
        }
    };
    let tokens = model.vision_tokens(select(&px, &idx))?;
    let (p, d) = (tokens.shape()[1], tokens.shape()[2]);
    let latents = model.latents(tokens.into_shape_with_order(vec![1, t, f, p, d])?)?;
    Ok(model.media_kv(latents)?)
}

fn ids_of(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
        .unwrap_or_default()
}

/// A single-row step over `ids[from..to]` of a sequence whose media times are `mt`.
fn step(ids: &[i64], mt: &[i64], from: usize, to: usize, keep: usize) -> Result<Step> {
    let row = |v: &[i64]| Array2::from_shape_vec((1, v.len()), v.to_vec());
    Ok(Step {
        input_ids: row(&ids[from..to])?,
        attention_mask: row(&vec![1; to])?,
        position_ids: row(&position_ids(&vec![1; to])[from..to])?,
        media_time: row(&mt[from..to])?,
        keep,
    })
}

/// Media times for a prompt followed by generated tokens: the running count
/// in the prompt, the prompt's total afterwards.
fn media_times(prompt: &[i64], generated: usize, media_token: i64) -> Vec<i64> {
    let mut mt = media_time(prompt, media_token);
    let last = mt.last().copied().unwrap_or(0);
    mt.extend(std::iter::repeat_n(last, generated));
    mt
}

golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
         tiny_llama_video = "tiny-llama-video", tiny_mosaic = "tiny-mosaic"]
    full_prompt_logits_match_the_reference);
golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
     tiny_mosaic = "tiny-mosaic"]
    incremental_decoding_equals_a_full_pass_and_the_reference_greedy_scores);
golden!([tiny_neox = "tiny-neox"] a_decode_step_can_keep_only_the_last_logits);

fn full_prompt_logits_match_the_reference(fx: &str, backend: BackendKind) -> Result<()> {
    let mut checked = 0;
    let mut model = Model::load(&exported(fx)?, backend)?;
    let media_token = model.manifest.special_tokens.media as i64;
    let exp = Expected::load(fx)?;
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        let Some(key) = case["expect"]["logits"].as_str() else {
            continue;
        };
        let kv = case_media(&mut model, &exp, case)?;
        let ids = ids_of(&case["input_ids"]);
        let mt = media_time(&ids, media_token);
        let mut cache = model.empty_cache(1);
        let logits = model.decode(&step(&ids, &mt, 0, ids.len(), ids.len())?, &kv, &mut cache)?;
        let d = max_abs_diff(&logits, &exp.get(key)?)?;
        eprintln!("logits {backend} {fx} {key}: max abs diff {d:.3e}");
        assert!(
            d <= tolerance::LOGITS,
            "{backend} {fx} {key}: max abs diff {d}"
        );
        checked += 1;
    }
    let want = if fx.ends_with("video") { 1 } else { 4 };
    assert_eq!(
        checked, want,
        "{fx}: every case with expected logits was checked"
    );
    Ok(())
}

fn incremental_decoding_equals_a_full_pass_and_the_reference_greedy_scores(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    let mut checked = 0;
    let mut model = Model::load(&exported(fx)?, backend)?;
    let media_token = model.manifest.special_tokens.media as i64;
    let exp = Expected::load(fx)?;
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        let Some(key) = case["expect"]["greedy_scores"].as_str() else {
            continue;
        };
        let kv = case_media(&mut model, &exp, case)?;
        let prompt = ids_of(&case["input_ids"]);
        let all = ids_of(&case["greedy"]["output_ids"]);
        let (s, n) = (prompt.len(), all.len());
        let mt = media_times(&prompt, n - s, media_token);
        // one full pass over prompt + generated tokens
        let mut c = model.empty_cache(1);
        let full = model.decode(&step(&all, &mt, 0, n, n)?, &kv, &mut c)?;
        // the prompt in two chunks, then one token at a time
        let mut cache = model.empty_cache(1);
        let half = s / 2;
        let mut parts = vec![model.decode(&step(&all, &mt, 0, half, half)?, &kv, &mut cache)?];
        parts.push(model.decode(&step(&all, &mt, half, s, s - half)?, &kv, &mut cache)?);
        for t in s..n {
            parts.push(model.decode(&step(&all, &mt, t, t + 1, 1)?, &kv, &mut cache)?);
        }
        assert_eq!(cache.len(), n);
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let inc = concatenate(Axis(1), &views)?;
        let d = max_abs_diff(&inc, &full)?;
        eprintln!("incremental vs full {backend} {fx} {key}: max abs diff {d:.3e}");
        assert!(
            d <= tolerance::INCREMENTAL,
            "{backend} {fx}: incremental differs from full by {d}"
        );
        // per-step scores: position s-1 .. s-1+steps
        let want = exp.get(key)?;
        let steps = want.shape()[1];
        let got: ArrayD<f32> = inc
            .slice_axis(Axis(1), (s - 1..s - 1 + steps).into())
            .to_owned();
        let d = max_abs_diff(&got, &want)?;
        eprintln!("greedy scores {backend} {fx} {key}: max abs diff {d:.3e}");
        assert!(
            d <= tolerance::GREEDY_SCORES,
            "{backend} {fx} {key}: greedy scores differ by {d}"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "{fx}: every case with greedy scores was checked"
    );
    Ok(())
}

/// A decode step computes the LM head for the last position only.
fn a_decode_step_can_keep_only_the_last_logits(fx: &str, backend: BackendKind) -> Result<()> {
    let mut model = Model::load(&exported(fx)?, backend)?;
    let exp = Expected::load(fx)?;
    let case = &cases(fx)?["cases"][0];
    let kv = case_media(&mut model, &exp, case)?;
    let ids = ids_of(&case["input_ids"]);
    let mt = media_time(&ids, model.manifest.special_tokens.media as i64);
    let mut cache = model.empty_cache(1);
    let last = model.decode(&step(&ids, &mt, 0, ids.len(), 1)?, &kv, &mut cache)?;
    let vocab = model.manifest.model.decoder.vocab_size;
    assert_eq!(last.shape(), &[1, 1, vocab]);
    let all = exp.get(case["expect"]["logits"].as_str().context("key")?)?;
    let want = all
        .slice_axis(Axis(1), (ids.len() - 1..ids.len()).into())
        .to_owned();
    assert!(max_abs_diff(&last, &want)? <= tolerance::LOGITS);
    Ok(())
}

/// Both backends bind the decoder's I/O: the KV cache stays with the backend
/// between steps (ONNX Runtime values, in device memory under CUDA; tract
/// tensors) and reads back equal across backends. Rewinding and beam
/// reordering bring it back to the host.
#[test]
fn the_kv_cache_stays_with_the_backend_between_steps_and_reads_back_equal() -> Result<()> {
    let fx = "tiny-llama";
    let exp = Expected::load(fx)?;
    let case = named_case(fx, "fewshot2")?;
    let ids = ids_of(&case["input_ids"]);
    let media = flamingo_json(fx)?["media_token_id"]
        .as_i64()
        .context("media token")?;
    let mt = media_times(&ids, 0, media);
    let n = ids.len();
    let mut caches = Vec::new();
    for backend in [BackendKind::Tract, BackendKind::OrtCpu] {
        let mut m = Model::load(&exported(fx)?, backend)?;
        let kv = case_media(&mut m, &exp, &case)?;
        let mut cache = m.empty_cache(1);
        m.decode(&step(&ids, &mt, 0, n - 2, 1)?, &kv, &mut cache)?;
        m.decode(&step(&ids, &mt, n - 2, n, 1)?, &kv, &mut cache)?;
        assert_eq!(cache.len(), n);
        assert!(cache.is_resident(), "{backend}");
        let mut rewound = cache.clone();
        rewound.truncate(n - 1)?;
        assert!(!rewound.is_resident());
        assert_eq!(rewound.len(), n - 1);
        let picked = cache.select(&[0, 0])?;
        assert_eq!(picked.host_layers().context("host")?[0].0.shape()[0], 2);
        cache.to_host()?;
        caches.push(cache);
    }
    for ((ka, va), (kb, vb)) in caches[0]
        .host_layers()
        .context("host")?
        .iter()
        .zip(caches[1].host_layers().context("host")?)
    {
        assert!(max_abs_diff(ka, kb)? <= tolerance::KV_ACROSS_BACKENDS);
        assert!(max_abs_diff(va, vb)? <= tolerance::KV_ACROSS_BACKENDS);
    }
    Ok(())
}
