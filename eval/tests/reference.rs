//! The metrics and post-processing against what the reference code gave on
//! the same inputs (`eval/reference/metrics.py` wrote `data/metrics.json`:
//! open_flamingo 2.0.1's `vqa_metric.py`, pycocoevalcap 1.2 with Stanford
//! CoreNLP 3.4.1's PTBTokenizer, scikit-learn's `roc_auc_score`, the
//! prompt methods of open_flamingo 2.0.1's eval model).

use flamingo_eval::{cider, classify, prompt, ptb, vqa};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/metrics.json"
    ))
    .expect("eval/tests/data/metrics.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is a string"))
}

#[test]
fn vqa_accuracy_equals_vqa_metric_py() {
    let r = reference();
    let cases = r["vqa"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let mut items = Vec::new();
    for c in cases {
        let answers = strings(&c["answers"]);
        let pred = str_of(c, "prediction");
        assert_eq!(vqa::normalize(pred), str_of(c, "normalized"), "{pred:?}");
        let want = c["accuracy"].as_f64().unwrap();
        let got = vqa::accuracy(pred, &answers);
        assert!(
            (got - want).abs() < 1e-9,
            "{pred:?} {answers:?}: {got} vs {want}"
        );
        items.push((pred.to_string(), answers));
    }
    let overall = vqa::overall(items.iter().map(|(p, a)| (p.as_str(), a.as_slice())));
    let want = r["vqa"]["overall"].as_f64().unwrap();
    assert!((overall - want).abs() < 1e-6, "{overall} vs {want}");
    // the synthetic answers span every kind of case
    let all: String = cases.iter().map(|c| str_of(c, "prediction")).collect();
    for needle in ["1,000", "Dont", "the ", "two", "?", "\n", "..."] {
        assert!(all.contains(needle), "no prediction holds {needle:?}");
    }
    assert!(cases.iter().any(|c| str_of(c, "prediction").is_empty()));
}

#[test]
fn ptb_tokens_and_cider_d_equal_pycocoevalcap() {
    let r = reference();
    let cases = r["cider"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    // tokenised as COCOEvalCap does: every reference in one run, every
    // hypothesis in another
    let raw_refs: Vec<&str> = cases
        .iter()
        .flat_map(|c| c["references"].as_array().unwrap())
        .map(|s| s.as_str().unwrap())
        .collect();
    let raw_hyps: Vec<&str> = cases.iter().map(|c| str_of(c, "hypothesis")).collect();
    let flat_refs = ptb::coco_batch(&raw_refs);
    let hyps = ptb::coco_batch(&raw_hyps);
    let want_refs: Vec<String> = cases
        .iter()
        .flat_map(|c| strings(&c["references_tokenized"]))
        .collect();
    let want_hyps: Vec<&str> = cases
        .iter()
        .map(|c| str_of(c, "hypothesis_tokenized"))
        .collect();
    let mut mismatches = Vec::new();
    for (raw, (got, want)) in raw_refs.iter().zip(flat_refs.iter().zip(&want_refs)) {
        if got != want {
            mismatches.push(format!("{raw:?}: {got:?} vs {want:?}"));
        }
    }
    for (raw, (got, want)) in raw_hyps.iter().zip(hyps.iter().zip(&want_hyps)) {
        if got != want {
            mismatches.push(format!("{raw:?}: {got:?} vs {want:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "PTB tokens differ:\n{}",
        mismatches.join("\n")
    );
    let mut refs = Vec::new();
    let mut at = 0;
    for c in cases {
        let n = c["references"].as_array().unwrap().len();
        refs.push(flat_refs[at..at + n].to_vec());
        at += n;
    }
    let items: Vec<cider::Item> = hyps
        .iter()
        .zip(&refs)
        .map(|(h, r)| cider::Item {
            hypothesis: h,
            references: r,
        })
        .collect();
    let (mean, scores) = cider::cider(&items);
    let mut worst = 0.0f64;
    for (c, got) in cases.iter().zip(&scores) {
        let want = c["cider"].as_f64().unwrap();
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() < 1e-6,
            "{}: {got} vs {want}",
            str_of(c, "hypothesis")
        );
    }
    eprintln!(
        "CIDEr-D: largest difference {worst:e} over {} images",
        cases.len()
    );
    let want = r["cider"]["cider"].as_f64().unwrap();
    assert!((mean - want).abs() < 1e-6, "{mean} vs {want}");
}

#[test]
fn post_processing_and_prompts_equal_open_flamingo() {
    let r = reference();
    for pair in r["postprocess_vqa"].as_array().unwrap() {
        let (i, o) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        assert_eq!(prompt::postprocess_vqa(i), o, "{i:?}");
    }
    for pair in r["postprocess_captioning"].as_array().unwrap() {
        let (i, o) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        assert_eq!(prompt::postprocess_caption(i), o, "{i:?}");
    }
    // the f-strings of open_flamingo's eval model
    assert_eq!(
        prompt::vqa("What is it?", Some("a cat")),
        "<image>Question:What is it? Short answer:a cat<|endofchunk|>"
    );
    assert_eq!(
        prompt::vqa("What is it?", None),
        "<image>Question:What is it? Short answer:"
    );
    assert_eq!(
        prompt::caption(Some("A dog.")),
        "<image>Output:A dog.<|endofchunk|>"
    );
    assert_eq!(prompt::caption(None), "<image>Output:");
}

#[test]
fn roc_auc_equals_scikit_learn() {
    let r = reference();
    let cases = r["roc_auc"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    for (k, c) in cases.iter().enumerate() {
        let labels: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_bool().unwrap())
            .collect();
        let scores: Vec<f64> = c["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect();
        let auc = classify::roc_auc(&labels, &scores).unwrap();
        let want = c["auc"].as_f64().unwrap();
        assert!((auc - want).abs() < 1e-12, "case {k}: {auc} vs {want}");
    }
}

#[test]
fn hateful_memes_auc_equals_evaluate_classification() {
    let r = reference();
    let classes = classify::HATEFUL_MEMES_CLASSES.map(String::from);
    for (k, c) in r["roc_auc"]["hateful_memes"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let labels: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_bool().unwrap())
            .collect();
        let scores: Vec<f64> = c["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|lp| {
                let lp: Vec<f64> = lp
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                classify::positive_probability(&lp, &classes)
            })
            .collect();
        let auc = classify::roc_auc(&labels, &scores).unwrap();
        let want = c["auc"].as_f64().unwrap();
        assert!((auc - want).abs() < 1e-12, "case {k}: {auc} vs {want}");
    }
}

#[test]
fn prompts_equal_the_eval_models() {
    let r = reference();
    let cases = r["prompts"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for c in cases {
        let text = str_of(c, "text");
        let label = c["label"].as_str();
        let got = match str_of(c, "fn") {
            "vqa" => prompt::vqa(text, label),
            "hateful_memes" => prompt::hateful_memes(text, label),
            "caption" => prompt::caption(label),
            "imagenet" => prompt::imagenet(label),
            f => panic!("unknown prompt function {f}"),
        };
        assert_eq!(got, str_of(c, "prompt"), "{c}");
    }
}
