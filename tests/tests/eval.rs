//! `flamingo eval` end to end on tiny datasets built from the fixture
//! images in the published formats (VQAv2 questions/annotations, a
//! Karpathy JSON, HatefulMemes JSON lines, an ImageNet class-folder tree),
//! on both backends; `--compare`'s bootstrap; and its errors on bad data.

use std::path::{Path, PathBuf};

use anyhow::Result;
use flamingo_eval::data::{self, Task};
use flamingo_eval::run::{compare, evaluate, PerSample, Settings, ShotResult, Trial};
use flamingo_eval::{cider, classify, vqa};
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
            None,
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
                None,
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
        None,
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
        None,
        &settings(vec![0]),
        &mut |_, _| {},
    )
    .err()
    .unwrap_or_default();
    assert!(
        e.contains("COCO_train2014_000000000002.jpg") && e.contains("test sample 21"),
        "{e}"
    );
    // OK-VQA says why it is not available
    assert!(Task::parse("okvqa").unwrap_err().contains("NLTK"));
    assert!(Task::parse("nope").unwrap_err().contains("unknown task"));
    Ok(())
}

/// HatefulMemes JSON lines over the fixture images: `{"id", "img", "label",
/// "text"}`, `img` as `img/NNNNN.png` (the images lie in `dir`).
fn memes(dir: &Path, name: &str, ids: &[u64]) -> Result<PathBuf> {
    let mut lines = String::new();
    for (k, &id) in ids.iter().enumerate() {
        let file = format!("{id:05}.png");
        std::fs::copy(
            fixture("tiny-mpt").join(format!("images/img{}.png", id % 4)),
            dir.join(&file),
        )?;
        let text = ["it's", "look", "no", "\"a\""][k % 4];
        let v =
            json!({"id": id, "img": format!("img/{file}"), "label": (k % 2) as u64, "text": text});
        lines += &format!("{v}\n");
    }
    let path = dir.join(name);
    std::fs::write(&path, lines)?;
    Ok(path)
}

fn same_on_both_backends(runs: &[Vec<ShotResult>]) {
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(a.shots, b.shots);
        for (ta, tb) in a.trials.iter().zip(&b.trials) {
            assert_eq!(ta.predictions.len(), tb.predictions.len());
            for (pa, pb) in ta.predictions.iter().zip(&tb.predictions) {
                assert_eq!(pa["id"], pb["id"]);
                assert_eq!(pa["label"], pb["label"], "{} shots", a.shots);
                let (sa, sb) = (
                    pa["scores"].as_array().unwrap(),
                    pb["scores"].as_array().unwrap(),
                );
                for (x, y) in sa.iter().zip(sb) {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "{x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn hateful_memes_eval_scores_its_classes_alike_on_both_backends() -> Result<()> {
    let root = tempfile::tempdir()?;
    let img = root.path().join("img");
    std::fs::create_dir_all(&img)?;
    let train = memes(&img, "train.jsonl", &[1, 2, 3, 4, 5, 6])?;
    let test = memes(&img, "dev.jsonl", &[11, 12, 13, 14])?;
    let train = data::hateful_memes(&img, &train).map_err(anyhow::Error::msg)?;
    let test = data::hateful_memes(&img, &test).map_err(anyhow::Error::msg)?;
    assert_eq!(test[1].answers, ["yes"]);
    assert_eq!(test[1].image, img.join("00012.png"));
    let classes = classify::HATEFUL_MEMES_CLASSES.map(String::from);
    let model = exported("tiny-mpt")?;
    let mut runs = Vec::new();
    for backend in BACKENDS {
        let mut p = Pipeline::load(&model, backend)?;
        let r = evaluate(
            &mut p,
            Task::HatefulMemes,
            &train,
            &test,
            Some(&classes),
            // the tiny model's 128 positions hold one demonstration of
            // this prompt (0 shots would be two): the 0-shot path is
            // ImageNet's test
            &settings(vec![1]),
            &mut |_, _| {},
        )
        .map_err(anyhow::Error::msg)?;
        runs.push(r);
    }
    same_on_both_backends(&runs);
    for r in &runs[0] {
        for t in &r.trials {
            // the score is the ROC-AUC of the predictions' yes-probabilities
            let (labels, scores): (Vec<bool>, Vec<f64>) = t
                .predictions
                .iter()
                .map(|p| {
                    let q = test.iter().find(|q| q.id == p["id"]).unwrap();
                    let sc: Vec<f64> = p["scores"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect();
                    assert_eq!(sc.len(), 2);
                    assert_eq!(p["label"], classes[classify::top_k(&sc, 1)[0]]);
                    (
                        q.answers[0] == "yes",
                        classify::positive_probability(&sc, &classes),
                    )
                })
                .unzip();
            let auc = 100.0 * classify::roc_auc(&labels, &scores).map_err(anyhow::Error::msg)?;
            assert!((auc - t.score).abs() < 1e-9, "{auc} vs {}", t.score);
        }
    }
    // the scores are those of Pipeline::score_classes on the prompt
    let mut p = Pipeline::load(&model, BACKENDS[0])?;
    let t = &runs[0][0].trials[0];
    let q = test
        .iter()
        .find(|q| q.id == t.predictions[0]["id"])
        .unwrap();
    let demo_free = format!(
        "{}{}",
        flamingo_eval::prompt::hateful_memes(&train[0].text, Some("no")),
        flamingo_eval::prompt::hateful_memes(&q.text, None)
    );
    let got = p.score_classes(
        &demo_free.replacen("<image>", "", 1),
        &[flamingo_runtime::Media::Image(q.image.clone())],
        &classes,
    )?;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|c| c.logprob_sum < 0.0 && c.num_tokens >= 1));
    Ok(())
}

#[test]
fn imagenet_eval_gives_top1_and_top5_alike_on_both_backends() -> Result<()> {
    let root = tempfile::tempdir()?;
    let classes: Vec<String> = [
        "tench",
        "goldfish",
        "great white shark",
        "tiger shark",
        "hammerhead shark",
        "electric ray",
    ]
    .map(String::from)
    .to_vec();
    for split in ["train", "val"] {
        for (c, wnid) in [
            "n01440764",
            "n01443537",
            "n01484850",
            "n01491361",
            "n01494475",
            "n01496331",
        ]
        .iter()
        .enumerate()
        {
            let dir = root.path().join(split).join(wnid);
            std::fs::create_dir_all(&dir)?;
            let n = if split == "train" {
                2
            } else {
                usize::from(c < 3)
            };
            for k in 0..n {
                std::fs::copy(
                    fixture("tiny-mpt").join(format!("images/img{}.png", (c + k) % 4)),
                    dir.join(format!("{wnid}_{k}.JPEG")),
                )?;
            }
            std::fs::write(dir.join("notes.txt"), "not an image")?;
        }
    }
    let train =
        data::image_folder(&root.path().join("train"), &classes).map_err(anyhow::Error::msg)?;
    let test =
        data::image_folder(&root.path().join("val"), &classes).map_err(anyhow::Error::msg)?;
    assert_eq!((train.len(), test.len()), (12, 3));
    assert_eq!(train[2].answers, ["goldfish"]);
    assert_eq!(train[2].id, json!(2));
    let model = exported("tiny-mpt")?;
    let mut runs = Vec::new();
    for backend in BACKENDS {
        let mut p = Pipeline::load(&model, backend)?;
        runs.push(
            evaluate(
                &mut p,
                Task::ImageNet,
                &train,
                &test,
                Some(&classes),
                &settings(vec![0, 2]),
                &mut |_, _| {},
            )
            .map_err(anyhow::Error::msg)?,
        );
    }
    same_on_both_backends(&runs);
    for r in &runs[0] {
        for t in &r.trials {
            let (mut top1, mut top5) = (0.0, 0.0);
            for p in &t.predictions {
                let q = &test[p["id"].as_u64().unwrap() as usize];
                let sc: Vec<f64> = p["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                assert_eq!(sc.len(), 6);
                let top = classify::top_k(&sc, 5);
                top1 += f64::from(classes[top[0]] == q.answers[0]);
                top5 += f64::from(top.iter().any(|&i| classes[i] == q.answers[0]));
            }
            assert!((100.0 * top1 / 3.0 - t.score).abs() < 1e-9);
            assert!((100.0 * top5 / 3.0 - t.top5.unwrap()).abs() < 1e-9);
        }
        let j = r.to_json(Task::ImageNet);
        assert_eq!(j["top5"].as_array().unwrap().len(), 2);
    }
    // a tree whose folders do not match the class names
    let e = data::image_folder(&root.path().join("val"), &classes[..5]).unwrap_err();
    assert!(e.contains("6 class folders for 5 class names"), "{e}");
    Ok(())
}

fn trial(seed: u64, per: PerSample) -> Trial {
    let n = per.len();
    Trial {
        seed,
        score: per.score_of(&(0..n).collect::<Vec<_>>()).unwrap(),
        top5: None,
        predictions: (0..n).map(|i| json!({"question_id": i})).collect(),
        per_sample: per,
    }
}

fn shot(shots: usize, trials: Vec<Trial>) -> ShotResult {
    let mean = trials.iter().map(|t| t.score).sum::<f64>() / trials.len() as f64;
    ShotResult {
        shots,
        trials,
        mean,
        std: 0.0,
    }
}

#[test]
fn compare_bootstraps_the_paired_difference() -> Result<()> {
    // b is a plus 10 on every sample: every resample differs by 10
    let a: Vec<f64> = (0..50).map(|i| (i * 37 % 100) as f64).collect();
    let b: Vec<f64> = a.iter().map(|x| x + 10.0).collect();
    let c = compare(
        &[shot(4, vec![trial(1, PerSample::Mean(a.clone()))])],
        &[shot(4, vec![trial(1, PerSample::Mean(b))])],
        500,
        7,
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(c.len(), 1);
    assert!((c[0].difference - 10.0).abs() < 1e-9);
    assert!((c[0].ci95.0 - 10.0).abs() < 1e-9 && (c[0].ci95.1 - 10.0).abs() < 1e-9);
    assert_eq!(c[0].resamples, 500);
    // a noisy difference: the interval holds it, and is wider than zero
    let b: Vec<f64> = a
        .iter()
        .enumerate()
        .map(|(i, x)| x + [-20.0, 30.0][i % 2])
        .collect();
    let c = compare(
        &[shot(
            0,
            vec![
                trial(1, PerSample::Mean(a.clone())),
                trial(2, PerSample::Mean(a.clone())),
            ],
        )],
        &[shot(
            0,
            vec![
                trial(1, PerSample::Mean(b.clone())),
                trial(2, PerSample::Mean(b)),
            ],
        )],
        1000,
        7,
    )
    .map_err(anyhow::Error::msg)?;
    let (lo, hi) = c[0].ci95;
    assert!((c[0].difference - 5.0).abs() < 1e-9);
    assert!(lo < 5.0 && 5.0 < hi && hi - lo > 1.0, "{lo} {hi}");
    // an AUC: resamples recompute it
    let pairs: Vec<(bool, f64)> = (0..40).map(|i| (i % 2 == 0, (i % 7) as f64)).collect();
    let better: Vec<(bool, f64)> = pairs.iter().map(|&(l, s)| (l, s + f64::from(l))).collect();
    let c = compare(
        &[shot(2, vec![trial(3, PerSample::Auc(pairs))])],
        &[shot(2, vec![trial(3, PerSample::Auc(better))])],
        300,
        7,
    )
    .map_err(anyhow::Error::msg)?;
    assert!(c[0].difference > 0.0 && c[0].ci95.0 >= 0.0, "{:?}", c[0]);
    // different samples are refused
    let e = compare(
        &[shot(2, vec![trial(3, PerSample::Mean(a.clone()))])],
        &[shot(2, vec![trial(3, PerSample::Mean(a[..10].to_vec()))])],
        10,
        7,
    )
    .unwrap_err();
    assert!(e.contains("different samples"), "{e}");
    Ok(())
}

#[test]
fn classification_data_errors_name_the_file_and_line() -> Result<()> {
    let root = tempfile::tempdir()?;
    let bad = root.path().join("train.jsonl");
    for (text, needle) in [
        ("{\"questions\": []}\n", "line 1: no `img`"),
        (
            "{\"id\": 1, \"img\": \"img/1.png\", \"label\": 2, \"text\": \"x\"}\n",
            "line 1: `label` must be 0 or 1",
        ),
        (
            "\n{\"id\": 1, \"img\": \"..\", \"label\": 0, \"text\": \"x\"}\n",
            "line 2: `img` \"..\" names no file",
        ),
        ("not json\n", "line 1: not a JSON object"),
        ("", "no samples"),
    ] {
        std::fs::write(&bad, text)?;
        let e = data::hateful_memes(root.path(), &bad).unwrap_err();
        assert!(e.contains("train.jsonl") && e.contains(needle), "{e}");
    }
    // a listed meme whose image is missing
    std::fs::write(
        &bad,
        "{\"id\": 9, \"img\": \"img/9.png\", \"label\": 1, \"text\": \"x\"}\n",
    )?;
    let s = data::hateful_memes(root.path(), &bad).map_err(anyhow::Error::msg)?;
    let mut p = Pipeline::load(&exported("tiny-mpt")?, BACKENDS[0])?;
    let classes = classify::HATEFUL_MEMES_CLASSES.map(String::from);
    let e = evaluate(
        &mut p,
        Task::HatefulMemes,
        &s,
        &s,
        Some(&classes),
        &settings(vec![0]),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.contains("9.png") && e.contains("missing"), "{e}");
    let e = data::image_folder(&root.path().join("nope"), &classes).unwrap_err();
    assert!(e.contains("nope"), "{e}");
    Ok(())
}
