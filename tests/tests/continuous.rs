//! Continuous batching (`flamingo_runtime::pipeline::continuous`): a
//! request's tokens are the same whether it ran alone or joined a busy
//! batch whose rows have other past lengths and leave along the way
//! (greedy: exact ids; seeded sampling too), on both backends; prompt
//! prefixes from the prefix cache give the same tokens as prefilled ones.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use flamingo_runtime::pipeline::continuous::{Batch, PrefixCache, RowEvent};
use flamingo_runtime::{BackendKind, Pipeline, Request};
use flamingo_tests::*;

/// A finished row: its generated ids, and the tokens it streamed.
type Finished = (Vec<u32>, Vec<u32>);

/// Steps `batch` until it is empty, `joins[k]` joining before step `k`
/// picks its tokens: before that pick when `k` is even, and between the
/// pick and the decoder step of step `k - 1` when it is odd (a server's
/// engine admits while the picked tokens stream out).
fn drive(
    p: &mut Pipeline,
    mut joins: Vec<Vec<(u64, Request)>>,
    mut prefixes: Option<&mut PrefixCache>,
    max_seen: &mut usize,
) -> Result<HashMap<u64, Finished>> {
    let mut batch = Batch::default();
    let mut out = HashMap::new();
    let mut streamed: HashMap<u64, Vec<u32>> = HashMap::new();
    joins.reverse();
    let mut steps = 0;
    while !batch.is_empty() || !joins.is_empty() {
        if steps % 2 == 0 {
            if let Some(now) = joins.pop() {
                for (id, r) in now {
                    p.batch_join(&mut batch, id, &r, prefixes.as_deref_mut())?;
                }
            }
        }
        *max_seen = (*max_seen).max(batch.len());
        let events = p.batch_pick(&mut batch)?;
        if steps % 2 == 1 {
            if let Some(now) = joins.pop() {
                for (id, r) in now {
                    p.batch_join(&mut batch, id, &r, prefixes.as_deref_mut())?;
                }
            }
        }
        p.batch_advance(&mut batch)?;
        for e in events {
            match e {
                RowEvent::Token { id, token, .. } => streamed.entry(id).or_default().push(token),
                RowEvent::Done { id, generation } => {
                    let s = streamed.remove(&id).unwrap_or_default();
                    out.insert(id, (generation.sequences[0].generated_ids.clone(), s));
                }
            }
        }
        steps += 1;
        assert!(steps < 10_000, "the batch never empties");
    }
    Ok(out)
}

fn requests(fx: &str, sampled: bool) -> Result<Vec<Request>> {
    let mut reqs = held_out_requests(fx)?;
    reqs.truncate(5);
    for (i, r) in reqs.iter_mut().enumerate() {
        // different budgets: rows leave at different steps
        r.options.max_new_tokens = [9, 3, 6, 12, 4][i];
        if sampled {
            r.options.do_sample = true;
            r.options.temperature = 0.9;
            r.options.top_k = 20;
            r.options.seed = 100 + i as u64;
        }
    }
    Ok(reqs)
}

fn a_request_gives_the_same_tokens_alone_or_joining_a_busy_batch_on(
    dir: &Path,
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    let mut p = Pipeline::load(dir, backend)?;
    for sampled in [false, true] {
        let reqs = requests(fx, sampled)?;
        let alone: Vec<Vec<u32>> = reqs
            .iter()
            .map(|r| Ok(p.generate(r)?.sequences[0].generated_ids.clone()))
            .collect::<Result<_>>()?;
        // 0 and 1 start together; 2 joins after three steps (1 has left
        // by the fourth), while the third's decoder step is waiting; 3 and
        // 4 later still
        let joins = vec![
            vec![(0, reqs[0].clone()), (1, reqs[1].clone())],
            vec![],
            vec![],
            vec![(2, reqs[2].clone())],
            vec![(3, reqs[3].clone())],
            vec![],
            vec![],
            vec![(4, reqs[4].clone())],
        ];
        let mut most = 0;
        let got = drive(&mut p, joins, None, &mut most)?;
        assert!(most >= 3, "{fx}: at most {most} rows together");
        for (i, want) in alone.iter().enumerate() {
            let (ids, streamed) = &got[&(i as u64)];
            assert_eq!(ids, want, "{backend} {fx} request {i} (sampled: {sampled})");
            assert_eq!(streamed, ids, "{fx}: every token streamed once");
        }
    }
    Ok(())
}

fn a_cached_prompt_prefix_gives_the_same_tokens_on(
    dir: &Path,
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    let mut p = Pipeline::load(dir, backend)?;
    // few-shot prompts: their prefixes end at an <|endofchunk|>
    let reqs: Vec<Request> = held_out_requests(fx)?
        .into_iter()
        .filter(|r| r.prompt.contains("<|endofchunk|>"))
        .take(2)
        .map(|mut r| {
            r.options.max_new_tokens = 6;
            r
        })
        .collect();
    assert_eq!(reqs.len(), 2);
    let mut cache = PrefixCache::new(64 << 20);
    for r in &reqs {
        let alone = p.generate(r)?.sequences[0].generated_ids.clone();
        let mut most = 0;
        // the first join fills the cache, the second (with a busy row) hits it
        let first = drive(
            &mut p,
            vec![vec![(0, r.clone())]],
            Some(&mut cache),
            &mut most,
        )?;
        let second = drive(
            &mut p,
            vec![vec![(1, reqs[0].clone()), (2, r.clone())]],
            Some(&mut cache),
            &mut most,
        )?;
        assert_eq!(first[&0].0, alone, "{backend} {fx}: prefilled prefix");
        assert_eq!(second[&2].0, alone, "{backend} {fx}: cached prefix");
    }
    assert!(cache.hits >= 3, "{fx}: {} hits", cache.hits);
    assert_eq!(cache.misses, 2, "{fx}");
    assert!(cache.bytes() > 0);
    Ok(())
}

/// Requests admitted together are prefilled together
/// (`Pipeline::batch_join_many`): those whose prompts' rests (after a
/// cached prefix) have one length in one decoder call over their prefixes
/// stacked, left-padded. Each gets the tokens it gets alone: with the
/// prefix cache filling, then hit, and without it.
fn requests_joining_together_give_the_tokens_they_give_alone_on(
    dir: &Path,
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    let mut p = Pipeline::load(dir, backend)?;
    let held = held_out_requests(fx)?;
    let three_shot = held[4].clone();
    assert_eq!(three_shot.media.len(), 3);
    // the same query after one support fewer: a rest of the same length
    // over a shorter prefix
    let mut two_shot = three_shot.clone();
    let cut = two_shot.prompt.find("<|endofchunk|>").context("a chunk")? + "<|endofchunk|>".len();
    two_shot.prompt = two_shot.prompt[cut..].to_string();
    two_shot.media.remove(0);
    // the same supports and another query image: a rest of the same length
    // over the same prefix, found in the cache from the first pass on
    let mut other_query = three_shot.clone();
    other_query.media[2] = held[0].media[0].clone();
    let reqs: Vec<Request> = [
        three_shot,
        two_shot,
        held[0].clone(),
        held[1].clone(),
        other_query,
    ]
    .into_iter()
    .map(|mut r| {
        r.options.max_new_tokens = 6;
        r
    })
    .collect();
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| Ok(p.generate(r)?.sequences[0].generated_ids.clone()))
        .collect::<Result<_>>()?;
    let mut cache = PrefixCache::new(64 << 20);
    for pass in ["prefixes prefilled", "prefixes cached", "no prefix cache"] {
        let mut batch = Batch::default();
        let joining: Vec<(u64, &Request)> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .collect();
        let prefixes = (pass != "no prefix cache").then_some(&mut cache);
        for r in p.batch_join_many(&mut batch, &joining, prefixes) {
            r?;
        }
        assert_eq!(batch.len(), 5);
        let mut got = HashMap::new();
        for _ in 0..100 {
            if batch.is_empty() {
                break;
            }
            for e in p.batch_step(&mut batch)? {
                if let RowEvent::Done { id, generation } = e {
                    got.insert(id, generation.sequences[0].generated_ids.clone());
                }
            }
        }
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(
                got.get(&(i as u64)),
                Some(want),
                "{backend} {fx} {pass}: request {i}"
            );
        }
    }
    // the other query finds its supports' prefix from the first pass on
    assert_eq!((cache.misses, cache.hits), (3, 5), "{fx}");
    Ok(())
}

fn a_request_gives_the_same_tokens_alone_or_joining_a_busy_batch(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    a_request_gives_the_same_tokens_alone_or_joining_a_busy_batch_on(&exported(fx)?, fx, backend)
}

fn a_cached_prompt_prefix_gives_the_same_tokens(fx: &str, backend: BackendKind) -> Result<()> {
    a_cached_prompt_prefix_gives_the_same_tokens_on(&exported(fx)?, fx, backend)
}

fn requests_joining_together_give_the_tokens_they_give_alone(
    fx: &str,
    backend: BackendKind,
) -> Result<()> {
    requests_joining_together_give_the_tokens_they_give_alone_on(&exported(fx)?, fx, backend)
}

/// The same on decoders whose KV cache is updated in place (`convert
/// --precision fp32-ort`: ONNX Runtime's `GroupQueryAttention`), where rows
/// joining or leaving re-lay the buffers and joins prefill one by one.
#[test]
fn in_place_kv_decoders_batch_continuously() -> Result<()> {
    for fx in ["tiny-mpt", "tiny-mosaic"] {
        let dir = flamingo_tests::variant::fp32_ort(fx)?;
        let m = flamingo_contract::Manifest::load(&dir)?;
        assert_eq!(
            m.graph(flamingo_contract::GraphRole::Decoder)?.kv_update,
            Some(flamingo_contract::KvUpdate::InPlace),
            "{fx}"
        );
        a_request_gives_the_same_tokens_alone_or_joining_a_busy_batch_on(
            &dir,
            fx,
            BackendKind::OrtCpu,
        )?;
        a_cached_prompt_prefix_gives_the_same_tokens_on(&dir, fx, BackendKind::OrtCpu)?;
        requests_joining_together_give_the_tokens_they_give_alone_on(
            &dir,
            fx,
            BackendKind::OrtCpu,
        )?;
    }
    Ok(())
}

golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox", tiny_llama = "tiny-llama",
     tiny_mosaic = "tiny-mosaic"]
    a_request_gives_the_same_tokens_alone_or_joining_a_busy_batch,
    a_cached_prompt_prefix_gives_the_same_tokens,
    requests_joining_together_give_the_tokens_they_give_alone);

#[test]
fn a_cancelled_row_leaves_at_the_next_step_and_beams_are_refused() -> Result<()> {
    let fx = "tiny-mpt";
    let mut p = Pipeline::load(&exported(fx)?, BackendKind::Tract)?;
    let reqs = requests(fx, false)?;
    let mut batch = Batch::default();
    p.batch_join(&mut batch, 7, &reqs[3], None)?;
    p.batch_join(&mut batch, 8, &reqs[0], None)?;
    p.batch_step(&mut batch)?;
    batch.cancel(7);
    let events = p.batch_step(&mut batch)?;
    let done: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            RowEvent::Done { id, generation } => {
                assert_eq!(generation.sequences[0].generated_ids.len(), 1);
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![7]);
    assert_eq!(batch.ids(), vec![8]);
    let mut beam = reqs[0].clone();
    beam.options.num_beams = 2;
    let e = p.batch_join(&mut batch, 9, &beam, None).unwrap_err();
    assert!(e.to_string().contains("beam search"), "{e}");
    Ok(())
}

/// The media cache keys an image by its content: a server writes each
/// request's images to new files, and they must still hit.
#[test]
fn the_media_cache_goes_by_content_not_by_path() -> Result<()> {
    use flamingo_runtime::Media;
    let mut p = Pipeline::load(&exported("tiny-mpt")?, BackendKind::Tract)?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    for f in [&a, &b] {
        std::fs::copy(fixture("tiny-mpt").join("images/img2.png"), f)?;
    }
    let la = p.latents(&[Media::Image(a)])?;
    let s0 = p.media_cache_stats();
    let lb = p.latents(&[Media::Image(b)])?;
    let s1 = p.media_cache_stats();
    assert_eq!(la, lb);
    assert_eq!(s1.misses, s0.misses, "{s0:?} then {s1:?}");
    assert!(s1.hits > s0.hits);
    assert_eq!(s1.bytes, s0.bytes);
    Ok(())
}
