//! The eval's prompts and the post-processing of what the model generates,
//! as open_flamingo 2.0.1's eval has them (`vqa_prompt` / `caption_prompt`
//! of its OpenFlamingo eval model, `postprocess_vqa_generation` in
//! `vqa_metric.py`, `postprocess_captioning_generation` in
//! `coco_metric.py`), and its classification prompts
//! (`get_imagenet_prompt`, `get_hateful_memes_prompt`).

/// `<image>Question:{q} Short answer:{a}<|endofchunk|>` for a
/// demonstration; without an answer (the query) it ends at `Short answer:`.
pub fn vqa(question: &str, answer: Option<&str>) -> String {
    match answer {
        Some(a) => format!("<image>Question:{question} Short answer:{a}<|endofchunk|>"),
        None => format!("<image>Question:{question} Short answer:"),
    }
}

/// `<image>Output:{caption}<|endofchunk|>`; without a caption (the query)
/// it ends at `Output:`.
pub fn caption(caption: Option<&str>) -> String {
    match caption {
        Some(c) => format!("<image>Output:{c}<|endofchunk|>"),
        None => "<image>Output:".to_string(),
    }
}

/// `<image>Output:{label}<|endofchunk|>` (`get_imagenet_prompt`); without a
/// label (the query) it ends at `Output:`.
pub fn imagenet(label: Option<&str>) -> String {
    caption(label)
}

/// `<image>is an image with: '{text}' written on it. Is it hateful?
/// Answer:{label}<|endofchunk|>` (`get_hateful_memes_prompt`); without a
/// label (the query) it ends at `Answer:`.
pub fn hateful_memes(text: &str, label: Option<&str>) -> String {
    let head = format!("<image>is an image with: '{text}' written on it. Is it hateful? Answer:");
    match label {
        Some(l) => format!("{head}{l}<|endofchunk|>"),
        None => head,
    }
}

/// `postprocess_vqa_generation`: the text before the first `Question`,
/// `Answer` or `Short`, then before the first `", "`.
pub fn postprocess_vqa(generated: &str) -> &str {
    let cut = ["Question", "Answer", "Short"]
        .iter()
        .filter_map(|w| generated.find(w))
        .min()
        .unwrap_or(generated.len());
    let answer = &generated[..cut];
    answer.split(", ").next().unwrap_or(answer)
}

/// `postprocess_captioning_generation`: the text before the first
/// `Output`.
pub fn postprocess_caption(generated: &str) -> &str {
    generated.split("Output").next().unwrap_or(generated)
}
