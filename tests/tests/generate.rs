//! Generation and scoring from the fixture PNGs through the whole pipeline,
//! against the reference (FLAMINGO.md section 7), on every backend.

use anyhow::{Context, Result};
use flamingo_runtime::{BackendKind, GenerateOptions, Media, Pipeline, Request};
use flamingo_tests::*;
use serde_json::Value;

fn image(fx: &str, i: usize) -> Media {
    Media::Image(fixture(fx).join(format!("images/img{i}.png")))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn request(fx: &str, case: &Value, spec: &Value) -> Result<Request> {
    Ok(Request {
        prompt: case["prompt"].as_str().context("prompt")?.to_string(),
        media: indices(&case["images"])
            .into_iter()
            .map(|i| image(fx, i))
            .collect(),
        options: GenerateOptions {
            max_new_tokens: spec["max_new_tokens"].as_u64().context("max_new_tokens")? as usize,
            num_beams: spec["num_beams"].as_u64().unwrap_or(1) as usize,
            stop_tokens: vec![spec["eos_token_id"].as_u64().context("eos")? as u32],
            ..Default::default()
        },
    })
}

fn full_ids(g: &flamingo_runtime::Generation) -> Vec<u32> {
    let mut v = g.prompt_ids.clone();
    v.extend(&g.sequences[0].generated_ids);
    v
}

golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
     tiny_mosaic = "tiny-mosaic"]
    greedy_and_beam_outputs_equal_the_reference,
    candidate_log_probabilities_match_the_reference,
    class_scores_over_a_shared_prefix_match_the_reference,
    a_left_padded_batch_with_different_media_counts_equals_the_reference);
golden!([tiny_llama = "tiny-llama"] sampling_is_reproducible_and_degenerates_to_greedy);

fn greedy_and_beam_outputs_equal_the_reference(fx: &str, backend: BackendKind) -> Result<()> {
    let mut checked = 0;
    let mut p = Pipeline::load(&exported(fx)?, backend)?;
    for case in cases(fx)?["cases"].as_array().context("cases")? {
        if case.get("prompt").is_none() {
            continue; // the batch case, tested on its own
        }
        for mode in ["greedy", "beam"] {
            let Some(spec) = case.get(mode) else { continue };
            let g = p.generate(&request(fx, case, spec)?)?;
            assert_eq!(
                g.prompt_ids,
                ids(&case["input_ids"]),
                "{fx} {}: prompt ids",
                case["name"]
            );
            assert_eq!(
                full_ids(&g),
                ids(&spec["output_ids"]),
                "{backend} {fx} {} {mode}",
                case["name"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "{fx}: greedy and beam of every prompt case");
    Ok(())
}

fn candidate_log_probabilities_match_the_reference(fx: &str, backend: BackendKind) -> Result<()> {
    let mut p = Pipeline::load(&exported(fx)?, backend)?;
    let case = &named_case(fx, "scoring")?;
    let cands: Vec<String> = case["candidates"]
        .as_array()
        .context("candidates")?
        .iter()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    let media: Vec<Media> = indices(&case["images"])
        .into_iter()
        .map(|i| image(fx, i))
        .collect();
    let scores = p.score(case["prompt"].as_str().context("prompt")?, &media, &cands)?;
    let sums = case["candidate_logprob_sums"].as_array().context("sums")?;
    assert_eq!(scores.len(), sums.len());
    for (s, want) in scores.iter().zip(sums) {
        let want = want.as_f64().context("sum")? as f32;
        let err = (s.logprob_sum - want).abs();
        eprintln!(
            "score {backend} {fx} {:?}: {} vs {want} (abs err {err:.2e})",
            s.text, s.logprob_sum
        );
        assert!(
            err <= tolerance::SCORE_ABS || err <= tolerance::SCORE_REL * want.abs(),
            "{backend} {fx} {:?}: {} vs {want}",
            s.text,
            s.logprob_sum
        );
    }
    Ok(())
}

/// [`Pipeline::score_classes`] runs the prompt once and its candidates
/// over the shared cache, tokenized apart as OpenFlamingo's classification
/// does; where that tokenization is the joint one, the sums are the
/// reference's.
fn class_scores_over_a_shared_prefix_match_the_reference(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    let mut p = Pipeline::load(&exported(fx)?, backend)?;
    let case = &named_case(fx, "scoring")?;
    let prompt = case["prompt"].as_str().context("prompt")?;
    let cands: Vec<String> = case["candidates"]
        .as_array()
        .context("candidates")?
        .iter()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    let media: Vec<Media> = indices(&case["images"])
        .into_iter()
        .map(|i| image(fx, i))
        .collect();
    let scores = p.score_classes(prompt, &media, &cands)?;
    let sums = case["candidate_logprob_sums"].as_array().context("sums")?;
    let prefix = p.tokenizer.encode(prompt)?;
    let mut checked = 0;
    for ((s, want), c) in scores.iter().zip(sums).zip(&cands) {
        let apart = p.tokenizer.encode_plain(c)?;
        assert_eq!(s.num_tokens, apart.len());
        let joint = p.tokenizer.encode(&format!("{prompt}{c}"))?;
        if joint != [prefix.clone(), apart].concat() {
            continue;
        }
        let want = want.as_f64().context("sum")? as f32;
        let err = (s.logprob_sum - want).abs();
        eprintln!(
            "classes {backend} {fx} {c:?}: {} vs {want} ({err:.2e})",
            s.logprob_sum
        );
        assert!(
            err <= tolerance::SCORE_ABS || err <= tolerance::SCORE_REL * want.abs(),
            "{backend} {fx} {c:?}: {} vs {want}",
            s.logprob_sum
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "{fx}: {checked} candidates tokenize alike apart and joined"
    );
    Ok(())
}

fn a_left_padded_batch_with_different_media_counts_equals_the_reference(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    {
        {
            let mut p = Pipeline::load(&exported(fx)?, backend)?;
            let case = &named_case(fx, "batch-left-pad")?;
            let spec = &case["greedy"];
            let mut reqs = Vec::new();
            for (r, prompt) in case["prompts"]
                .as_array()
                .context("prompts")?
                .iter()
                .enumerate()
            {
                let prompt = prompt.as_str().context("prompt")?;
                // the reference passes both images to every row; a row only
                // ever sees as many media as it has <image> markers
                let markers = prompt.matches("<image>").count();
                let media = indices(&case["images"][r])
                    .into_iter()
                    .take(markers)
                    .map(|i| image(fx, i))
                    .collect();
                reqs.push(Request {
                    prompt: prompt.to_string(),
                    media,
                    options: GenerateOptions {
                        max_new_tokens: spec["max_new_tokens"].as_u64().context("n")? as usize,
                        stop_tokens: vec![spec["eos_token_id"].as_u64().context("eos")? as u32],
                        ..Default::default()
                    },
                });
            }
            let outs = p.generate_batch(&reqs);
            for (r, out) in outs.into_iter().enumerate() {
                let g = out?;
                let mask = &case["attention_mask"][r];
                let want: Vec<u32> = ids(&spec["output_ids"][r])
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| mask.get(*j).and_then(|m| m.as_u64()) != Some(0))
                    .map(|(_, t)| t)
                    .collect();
                assert_eq!(full_ids(&g), want, "{backend} {fx} row {r}");
            }
        }
    }
    Ok(())
}

fn caption(fx: &str) -> Result<Request> {
    let all = cases(fx)?;
    let case = &all["cases"][0];
    request(fx, case, &case["greedy"])
}

fn sampling_is_reproducible_and_degenerates_to_greedy(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    {
        let mut p = Pipeline::load(&exported(fx)?, backend)?;
        let greedy = p.generate(&caption(fx)?)?;
        let sample = |p: &mut Pipeline, o: GenerateOptions| -> Result<Vec<u32>> {
            let mut r = caption(fx)?;
            r.options = GenerateOptions {
                do_sample: true,
                max_new_tokens: 10,
                stop_tokens: r.options.stop_tokens,
                ..o
            };
            Ok(p.generate(&r)?.sequences[0].generated_ids.clone())
        };
        let a = sample(
            &mut p,
            GenerateOptions {
                seed: 7,
                top_k: 0,
                ..Default::default()
            },
        )?;
        let b = sample(
            &mut p,
            GenerateOptions {
                seed: 7,
                top_k: 0,
                ..Default::default()
            },
        )?;
        assert_eq!(a, b, "same seed, same tokens");
        let seeds: Vec<Vec<u32>> = (0..4)
            .map(|s| {
                sample(
                    &mut p,
                    GenerateOptions {
                        seed: s,
                        top_k: 0,
                        temperature: 2.0,
                        ..Default::default()
                    },
                )
            })
            .collect::<Result<_>>()?;
        assert!(
            seeds.iter().any(|s| *s != seeds[0]),
            "different seeds should differ at temperature 2"
        );
        let want = &greedy.sequences[0].generated_ids;
        let cold = sample(
            &mut p,
            GenerateOptions {
                temperature: 1e-3,
                seed: 3,
                ..Default::default()
            },
        )?;
        assert_eq!(&cold, want, "temperature -> 0 is greedy");
        let zero = sample(
            &mut p,
            GenerateOptions {
                temperature: 0.0,
                seed: 3,
                ..Default::default()
            },
        )?;
        assert_eq!(&zero, want, "temperature 0 is greedy");
        let k1 = sample(
            &mut p,
            GenerateOptions {
                top_k: 1,
                seed: 11,
                temperature: 5.0,
                ..Default::default()
            },
        )?;
        assert_eq!(&k1, want, "top-k 1 is greedy");
    }
    Ok(())
}

#[test]
fn streaming_yields_the_tokens_as_they_come_and_can_stop() -> Result<()> {
    let fx = "tiny-mpt";
    let mut p = Pipeline::load(&exported(fx)?, flamingo_runtime::BackendKind::Tract)?;
    let req = caption(fx)?;
    let mut seen = Vec::new();
    let g = p.generate_stream(&req, &mut |e| {
        seen.push(e.token);
        true
    })?;
    assert_eq!(seen, g.sequences[0].generated_ids);
    let mut n = 0;
    let g = p.generate_stream(&req, &mut |_| {
        n += 1;
        n < 3
    })?;
    assert_eq!(
        g.sequences[0].generated_ids.len(),
        3,
        "stopped after the third token"
    );
    Ok(())
}

#[test]
fn bad_requests_fail_alone_with_clear_errors() -> Result<()> {
    let fx = "tiny-mpt";
    let mut p = Pipeline::load(&exported(fx)?, flamingo_runtime::BackendKind::Tract)?;
    let good = caption(fx)?;
    let mut wrong_count = good.clone();
    wrong_count.media.push(image(fx, 1));
    let mut missing = good.clone();
    missing.media = vec![Media::Image(fixture(fx).join("images/nope.png"))];
    let mut not_image = good.clone();
    not_image.media = vec![Media::Image(fixture(fx).join("cases.json"))];
    let mut too_long = good.clone();
    too_long.options.max_new_tokens = 1000;
    let outs = p.generate_batch(&[wrong_count, good.clone(), missing, not_image, too_long]);
    let err = |i: usize| {
        outs[i]
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        err(0).contains("1 <image> marker(s) but 2 media"),
        "{}",
        err(0)
    );
    assert!(outs[1].is_ok(), "the good request still runs");
    assert!(err(2).contains("nope.png"), "{}", err(2));
    assert!(
        err(3).contains("cases.json") && err(3).contains("not a readable image"),
        "{}",
        err(3)
    );
    assert!(
        err(4).contains("longer than the model allows"),
        "{}",
        err(4)
    );
    assert_eq!(
        full_ids(outs[1].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?),
        full_ids(&p.generate(&good)?)
    );
    Ok(())
}
