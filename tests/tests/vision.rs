//! Vision encoder, resampler and preprocessing against the reference
//! (FLAMINGO.md sections 2-4): one test per backend and fixture.

use anyhow::{Context, Result};
use flamingo_runtime::preprocess::{load_image, preprocess};
use flamingo_runtime::{BackendKind, Model};
use flamingo_tests::*;

golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
         tiny_llama_video = "tiny-llama-video", tiny_mosaic = "tiny-mosaic"]
    vision_tokens_match_the_reference,
    latents_match_the_reference_for_every_case);

#[test]
fn preprocessing_matches_the_reference_pixels_within_one_level() -> Result<()> {
    for fx in FIXTURES {
        let m = flamingo_contract::Manifest::load(&exported(fx)?)?;
        let expected = Expected::load(fx)?.get("pixel_values")?;
        for i in 0..expected.shape()[0] {
            let img = load_image(&fixture(fx).join(format!("images/img{i}.png")))?;
            let ours = preprocess(&img, &m.preprocess).into_dyn();
            let want = select(&expected, &[i]).index_axis_move(ndarray::Axis(0), 0);
            let d = max_abs_diff(&ours, &want)?;
            eprintln!("preprocess {fx} img{i}: max abs diff {d:.3e}");
            assert!(
                d <= tolerance::PIXELS,
                "{fx} img{i}: max abs diff {d} > one uint8 level"
            );
        }
    }
    Ok(())
}

fn vision_tokens_match_the_reference(fx: &str, backend: BackendKind) -> Result<()> {
    let mut model = Model::load(&exported(fx)?, backend)?;
    let exp = Expected::load(fx)?;
    let tokens = model.vision_tokens(exp.get("pixel_values")?)?;
    let d = max_abs_diff(&tokens, &exp.get("vision_tokens")?)?;
    eprintln!("vision_tokens {backend} {fx}: max abs diff {d:.3e}");
    assert!(
        d <= tolerance::VISION,
        "{backend} {fx}: vision_tokens max abs diff {d}"
    );
    Ok(())
}

/// Each case's media through the vision encoder and resampler, from the
/// reference pixels, as the reference batches them: `[1, T, F, P, D]`.
fn latents_match_the_reference_for_every_case(fx: &str, backend: BackendKind) -> Result<()> {
    let mut checked = 0;
    let mut model = Model::load(&exported(fx)?, backend)?;
    let exp = Expected::load(fx)?;
    let px = exp.get("pixel_values")?;
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        let Some(key) = case["expect"]["latents"].as_str() else {
            continue;
        };
        let (idx, t, f) = if case.get("frames").is_some() {
            let fr = indices(&case["frames"]);
            let n = fr.len();
            (fr, 1, n)
        } else {
            let im = indices(&case["images"]);
            let n = im.len();
            (im, n, 1)
        };
        let tokens = model.vision_tokens(select(&px, &idx))?;
        let (p, d) = (tokens.shape()[1], tokens.shape()[2]);
        let grouped = tokens.into_shape_with_order(vec![1, t, f, p, d])?;
        let latents = model.latents(grouped)?;
        let diff = max_abs_diff(&latents, &exp.get(key)?)?;
        eprintln!("latents {backend} {fx} {key}: max abs diff {diff:.3e}");
        assert!(
            diff <= tolerance::VISION,
            "{backend} {fx} {key}: max abs diff {diff}"
        );
        checked += 1;
    }
    // 4 cases per image fixture, the video case for the video fixture
    let want = if fx.ends_with("video") { 1 } else { 4 };
    assert_eq!(
        checked, want,
        "{fx}: every case with expected latents was checked"
    );
    Ok(())
}

/// From the PNGs through Rust preprocessing, `Model::encode` lands on the
/// reference latents (preprocessing is bit-exact on the fixtures).
fn encode_from_pngs_is_close_to_the_reference(fx: &str, backend: BackendKind) -> Result<()> {
    let mut model = Model::load(&exported(fx)?, backend)?;
    let frames = (0..3)
        .map(|i| fixture(fx).join(format!("images/img{i}.png")))
        .collect();
    let enc = model.encode(&[flamingo_runtime::Media::Video(frames)])?;
    let d = max_abs_diff(&enc.latents, &Expected::load(fx)?.get("video/latents")?)?;
    eprintln!("latents from PNGs {backend}: max abs diff {d:.3e}");
    assert!(
        d <= tolerance::VISION,
        "{backend}: latents from PNGs differ by {d}"
    );
    Ok(())
}

golden!([tiny_llama_video = "tiny-llama-video"] encode_from_pngs_is_close_to_the_reference);
golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
         tiny_mosaic = "tiny-mosaic"]
    a_prompts_images_encoded_together_equal_one_at_a_time);

/// The pipeline encodes a prompt's uncached images in one vision-encoder
/// call: its latents equal those of the images encoded one by one (to
/// float32 round-off) and the reference's; a repeated image is encoded once.
fn a_prompts_images_encoded_together_equal_one_at_a_time(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    use flamingo_runtime::{Media, Pipeline};
    let case = named_case(fx, "text-first")?;
    let media: Vec<Media> = indices(&case["images"])
        .into_iter()
        .map(|i| Media::Image(fixture(fx).join(format!("images/img{i}.png"))))
        .collect();
    assert_eq!(media.len(), 3);
    let mut together = Pipeline::load(&exported(fx)?, backend)?;
    let batched = together.latents(&media)?;
    // (the cache keeps vision tokens per image and latents per item)
    let s = together.media_cache_stats();
    assert_eq!(
        (s.hits, s.misses),
        (0, 6),
        "{fx}: three encodings, three resamplings"
    );
    let mut alone = Pipeline::load(&exported(fx)?, backend)?;
    let mut one_by_one = Vec::new();
    for m in &media {
        one_by_one.push(alone.latents(std::slice::from_ref(m))?);
    }
    let views: Vec<_> = one_by_one.iter().map(|l| l.view()).collect();
    let one_by_one = ndarray::concatenate(ndarray::Axis(1), &views)?;
    let diff = max_abs_diff(&batched, &one_by_one)?;
    eprintln!("{backend} {fx}: batched vision encoder vs one by one: max abs {diff:.2e}");
    assert!(diff <= tolerance::VISION, "{backend} {fx}: {diff}");
    let reference = Expected::load(fx)?.get(
        case["expect"]["latents"]
            .as_str()
            .context("expected latents")?,
    )?;
    let diff = max_abs_diff(&batched, &reference)?;
    assert!(
        diff <= tolerance::VISION,
        "{backend} {fx}: {diff} from the reference"
    );
    // the same image twice is encoded once, and both items get its latents
    let mut twice = Pipeline::load(&exported(fx)?, backend)?;
    let l = twice.latents(&[media[0].clone(), media[0].clone()])?;
    let s = twice.media_cache_stats();
    assert_eq!(
        (s.hits, s.misses),
        (1, 2),
        "{fx}: one encoding, one resampling"
    );
    assert_eq!(
        l.index_axis(ndarray::Axis(1), 0),
        l.index_axis(ndarray::Axis(1), 1)
    );
    Ok(())
}

golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
         tiny_mosaic = "tiny-mosaic"]
    the_media_kv_is_projected_per_item_and_cached);

/// The pipeline projects each media item's latents to the cross-attention
/// K/V alone and caches it by content: the prompt's K/V equal its latents
/// projected together (to float32 round-off), a second prompt
/// with the same images gets them from the cache bit for bit, and a
/// request's tokens are the same with the cache on or off. (A resampler
/// with media-time embeddings projects a prompt's latents together.)
fn the_media_kv_is_projected_per_item_and_cached(fx: &str, backend: BackendKind) -> Result<()> {
    use flamingo_runtime::{Media, Pipeline};
    let case = named_case(fx, "text-first")?;
    let media: Vec<Media> = indices(&case["images"])
        .into_iter()
        .map(|i| Media::Image(fixture(fx).join(format!("images/img{i}.png"))))
        .collect();
    let mut p = Pipeline::load(&exported(fx)?, backend)?;
    let per_item = p.media_kv(&media)?;
    let latents = p.latents(&media)?;
    let together = p.model.media_kv(latents)?;
    assert_eq!(per_item.tensors.len(), together.tensors.len());
    for ((n, a), (m, b)) in per_item.tensors.iter().zip(&together.tensors) {
        assert_eq!(n, m);
        assert_eq!(a.shape(), b.shape(), "{backend} {fx}: {n}");
        let diff = max_abs_diff(a, b)?;
        eprintln!("{backend} {fx}: {n} per item vs together: max abs {diff:.2e}");
        assert!(diff <= 1e-5, "{backend} {fx}: {n}: {diff}");
    }
    let before = p.media_cache_stats();
    let again = p.media_kv(&media)?;
    for ((_, a), (_, b)) in per_item.tensors.iter().zip(&again.tensors) {
        assert_eq!(a, b, "{backend} {fx}: the cached media K/V");
    }
    let after = p.media_cache_stats();
    assert_eq!(after.hits - before.hits, media.len() as u64, "{fx}");
    assert_eq!(after.misses, before.misses, "{fx}");
    let req = held_out_requests(fx)?
        .into_iter()
        .next()
        .context("a held-out request")?;
    let cached = p.generate(&req)?.sequences[0].generated_ids.clone();
    let cached_again = p.generate(&req)?.sequences[0].generated_ids.clone();
    let mut off = Pipeline::load(&exported(fx)?, backend)?;
    off.set_media_cache_bytes(0);
    let uncached = off.generate(&req)?.sequences[0].generated_ids.clone();
    assert_eq!(cached, uncached, "{backend} {fx}");
    assert_eq!(cached_again, uncached, "{backend} {fx}");
    Ok(())
}
