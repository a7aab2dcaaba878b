//! The README's and `flamingo_runtime`'s example ("From Rust"), run on the
//! bundled tiny model: the runtime itself depends on no exporter, so the
//! example's export step lives here.

use anyhow::Result;
use flamingo_runtime::{BackendKind, GenerateOptions, Media, Pipeline, Request};
use flamingo_tests::*;

#[test]
fn the_runtime_example_runs_on_the_tiny_model() -> Result<()> {
    let dir = exported("tiny-mpt")?;
    let (cat, dog) = (
        fixture("tiny-mpt").join("images/img1.png"),
        fixture("tiny-mpt").join("images/img0.png"),
    );
    let mut flamingo = Pipeline::load(&dir, BackendKind::Tract)?;

    // few-shot: one <image> marker per media item, in order
    let request = Request {
        prompt: "<image>An apple.<|endofchunk|><image>A photo of".into(),
        media: vec![Media::Image(cat.clone()), Media::Image(dog.clone())],
        options: GenerateOptions {
            max_new_tokens: 8,
            num_beams: 3,
            ..Default::default()
        },
    };
    let out = flamingo.generate(&request)?;
    assert_eq!(out.sequences.len(), 1);
    assert!(!out.sequences[0].generated_ids.is_empty());

    // streaming: tokens as they are produced (return false to stop)
    let greedy = Request {
        options: GenerateOptions::default(),
        ..request
    };
    let mut streamed = Vec::new();
    let g = flamingo.generate_stream(&greedy, &mut |t| {
        streamed.push(t.token);
        true
    })?;
    assert_eq!(streamed, g.sequences[0].generated_ids);

    // close-ended scoring: sum of candidate-token log-probabilities
    let scores = flamingo.score(
        "<image>Question: what is it? Answer:",
        &[Media::Image(cat)],
        &[" a cat.".to_string(), " a dog.".to_string()],
    )?;
    assert_eq!(scores.len(), 2);
    assert!(scores
        .iter()
        .all(|s| s.logprob_sum < 0.0 && s.num_tokens > 0));
    Ok(())
}
