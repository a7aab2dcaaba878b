//! `flamingo eval` end to end on tiny datasets built from the fixture
//! images in the published formats (VQAv2 questions/annotations, a
//! Karpathy JSON), on both backends; and its errors on bad data.

use std::path::{Path, PathBuf};

use anyhow::Result;
use flamingo_eval::data::{self, Task};
use flamingo_eval::run::{evaluate, Settings};
use flamingo_eval::{cider, vqa};
use flamingo_runtime::Pipeline;
use flamingo_tests::*;
use serde_json::{json, Value};

const QUESTIONS: [&str; 4] = [
    "What color is it?",
    "How many are there?",
    "Is it a photo?",
    "What is on the left?",
];

fn write(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string(v)?)?;
    Ok(())
}

/// A VQAv2-layout split of the fixture images: `DIR/{split}/COCO_{split}_
/// {id:012}.jpg` (PNG bytes; the decoder goes by content), questions and
/// annotations JSON with ten answers each.
fn vqa_split(root: &Path, split: &str, ids: &[u64]) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = root.join(split);
    std::fs::create_dir_all(&dir)?;
    let (mut qs, mut anns) = (vec![], vec![]);
    for (k, &id) in ids.iter().enumerate() {
        let img = fixture("tiny-mpt").join(format!("images/img{}.png", id % 4));
        std::fs::copy(img, dir.join(format!("COCO_{split}_{id:012}.jpg")))?;
        let qid = id * 10 + 1;
        qs.push(json!({"image_id": id, "question": QUESTIONS[k % 4], "question_id": qid}));
        let answers: Vec<Value> = (0..10)
            .map(|i| {
                let answer = ["red", "two", "yes", "a dog"][(k + i / 4) % 4];
                json!({"answer": answer, "answer_id": i + 1})
            })
            .collect();
        anns.push(json!({"question_id": qid, "image_id": id, "question_type": "what", "answers": answers}));
    }
    let q = root.join(format!("{split}_questions.json"));
    let a = root.join(format!("{split}_annotations.json"));
    write(&q, &json!({"questions": qs}))?;
    write(&a, &json!({"annotations": anns}))?;
    Ok((dir, q, a))
}

fn settings(shots: Vec<usize>) -> Settings {
    Settings {
        shots,
        num_samples: 0,
        seed: 7,
        trials: 2,
        batch: 2,
        query_set_size: 2048,
        ..Default::default()
    }
}

#[test]
fn vqa_eval_gives_the_same_predictions_on_both_backends() -> Result<()> {
    let root = tempfile::tempdir()?;
    let (train_dir, train_q, train_a) = vqa_split(root.path(), "train2014", &[1, 2, 3, 4, 5])?;
    let (test_dir, test_q, test_a) = vqa_split(root.path(), "val2014", &[6, 7, 8])?;
    let train =
        data::vqa(Task::VqaV2, &train_dir, &train_q, Some(&train_a)).map_err(anyhow::Error::msg)?;
    let test =
        data::vqa(Task::VqaV2, &test_dir, &test_q, Some(&test_a)).map_err(anyhow::Error::msg)?;
    assert_eq!(
        test[0].image,
        test_dir.join("COCO_val2014_000000000006.jpg")
    );
    assert_eq!(test[0].answers.len(), 10);
    let model = exported("tiny-mpt")?;
    let mut runs = Vec::new();
    for backend in BACKENDS {
        let mut p = Pipeline::load(&model, backend)?;
        let mut calls = 0;
        let r = evaluate(
            &mut p,
            Task::VqaV2,
            &train,
            &test,
            &settings(vec![0, 2]),
            &mut |_, _| calls += 1,
        )
        .map_err(anyhow::Error::msg)?;
        assert_eq!(calls, 2 * 2 * 2, "{backend:?}: a progress call per batch");
        runs.push(r);
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(a.shots, b.shots);
        for (ta, tb) in a.trials.iter().zip(&b.trials) {
            assert_eq!(
                ta.predictions, tb.predictions,
                "{} shots, seed {}",
                a.shots, ta.seed
            );
            assert_eq!(ta.score, tb.score);
        }
    }
    // each score is the metric of its predictions; every test question once
    for r in &runs[0] {
        assert_eq!(r.trials.len(), 2);
        for t in &r.trials {
            assert_eq!(t.predictions.len(), 3);
            let score = vqa::overall(t.predictions.iter().map(|p| {
                let q = test
                    .iter()
                    .find(|q| q.id == p["question_id"])
                    .expect("a test question");
                (p["answer"].as_str().unwrap(), q.answers.as_slice())
            }));
            assert!((score - t.score).abs() < 1e-9);
        }
        let json = r.to_json(Task::VqaV2);
        assert_eq!(json["task"], "vqav2");
        assert_eq!(json["trials"].as_array().unwrap().len(), 2);
    }
    Ok(())
}

#[test]
fn captioning_eval_gives_the_same_predictions_on_both_backends() -> Result<()> {
    let root = tempfile::tempdir()?;
    let images: Vec<Value> = (0..6)
        .map(|i| {
            let name = format!("{}.png", 1000 + i);
            std::fs::copy(fixture("tiny-mpt").join(format!("images/img{}.png", i % 4)), root.path().join(&name))
                .unwrap();
            json!({"filename": name, "split": if i < 4 { "train" } else { "test" },
                   "sentences": [{"raw": format!("A photo number {i}.")}, {"raw": "Two dogs on a beach."}]})
        })
        .collect();
    let karpathy = root.path().join("dataset_flickr30k.json");
    write(&karpathy, &json!({"images": images}))?;
    let train = data::karpathy(Task::Flickr30k, root.path(), &karpathy, "train")
        .map_err(anyhow::Error::msg)?;
    let test = data::karpathy(Task::Flickr30k, root.path(), &karpathy, "test")
        .map_err(anyhow::Error::msg)?;
    assert_eq!((train.len(), test.len()), (4, 2));
    assert_eq!(test[0].id, json!("1004"));
    let model = exported("tiny-mpt")?;
    let mut runs = Vec::new();
    for backend in BACKENDS {
        let mut p = Pipeline::load(&model, backend)?;
        runs.push(
            evaluate(
                &mut p,
                Task::Flickr30k,
                &train,
                &test,
                &settings(vec![2]),
                &mut |_, _| {},
            )
            .map_err(anyhow::Error::msg)?,
        );
    }
    let (a, b) = (&runs[0][0], &runs[1][0]);
    for (ta, tb) in a.trials.iter().zip(&b.trials) {
        assert_eq!(ta.predictions, tb.predictions);
        // the score is CIDEr-D x 100 of the predictions
        let hyps: Vec<&str> = ta
            .predictions
            .iter()
            .map(|p| p["caption"].as_str().unwrap())
            .collect();
        let refs: Vec<&[String]> = ta
            .predictions
            .iter()
            .map(|p| {
                let t = test.iter().find(|t| t.id == p["image_id"]).unwrap();
                t.answers.as_slice()
            })
            .collect();
        let (mean, _) = cider::coco(&hyps, &refs);
        assert!((100.0 * mean - ta.score).abs() < 1e-9);
    }
    Ok(())
}

#[test]
fn bad_data_is_a_clear_error_naming_the_file_and_entry() -> Result<()> {
    let root = tempfile::tempdir()?;
    let (dir, q, a) = vqa_split(root.path(), "val2014", &[1, 2])?;
    let err = |r: Result<Vec<data::Sample>, String>| r.err().unwrap_or_default();
    // the wrong format
    let karpathy = root.path().join("k.json");
    write(&karpathy, &json!({"images": []}))?;
    let e = err(data::vqa(Task::VqaV2, &dir, &karpathy, Some(&a)));
    assert!(
        e.contains("k.json") && e.contains("no `questions` list"),
        "{e}"
    );
    write(
        &karpathy,
        &json!({"questions": [{"image_id": 1, "question_id": 3}]}),
    )?;
    let e = err(data::vqa(Task::VqaV2, &dir, &karpathy, None));
    assert!(e.contains("questions[0] has no `question`"), "{e}");
    let e = err(data::karpathy(Task::Coco, &dir, &q, "test"));
    assert!(e.contains("no `images` list"), "{e}");
    // annotations in another order
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&a)?)?;
    v["annotations"].as_array_mut().unwrap().reverse();
    write(&a, &v)?;
    let e = err(data::vqa(Task::VqaV2, &dir, &q, Some(&a)));
    assert!(
        e.contains("annotations[0] is for question 21") && e.contains("same order"),
        "{e}"
    );
    // a VQAv2 image directory not named for its split
    let e = err(data::vqa(Task::VqaV2, root.path(), &q, None));
    assert!(e.contains("named for its COCO split"), "{e}");
    // an image listed but missing; more shots than demonstrations
    let (dir, q, a) = vqa_split(root.path(), "train2014", &[1, 2, 3])?;
    let samples = data::vqa(Task::VqaV2, &dir, &q, Some(&a)).map_err(anyhow::Error::msg)?;
    let mut p = Pipeline::load(&exported("tiny-mpt")?, BACKENDS[0])?;
    let e = evaluate(
        &mut p,
        Task::VqaV2,
        &samples,
        &samples[..1],
        &settings(vec![4]),
        &mut |_, _| {},
    )
    .err()
    .unwrap_or_default();
    assert!(
        e.contains("4 shots need 4 demonstrations") && e.contains("has 2 usable"),
        "{e}"
    );
    std::fs::remove_file(dir.join("COCO_train2014_000000000002.jpg"))?;
    let e = evaluate(
        &mut p,
        Task::VqaV2,
        &samples,
        &samples[1..2],
        &settings(vec![0]),
        &mut |_, _| {},
    )
    .err()
    .unwrap_or_default();
    assert!(
        e.contains("COCO_train2014_000000000002.jpg") && e.contains("test sample 21"),
        "{e}"
    );
    // tasks not implemented say so
    assert!(Task::parse("okvqa")
        .unwrap_err()
        .contains("not implemented yet"));
    assert!(Task::parse("nope").unwrap_err().contains("unknown task"));
    Ok(())
}
