//! The benchmarks' data in their published formats, read as OpenFlamingo's
//! `eval_datasets.py` reads them: VQAv2-format question and annotation
//! files (paired by position, as its `VQADataset` pairs them), Karpathy
//! split JSON for COCO and Flickr30k captions, and COCO caption
//! annotations for the CIDEr references.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A task of `flamingo eval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    VqaV2,
    VizWiz,
    TextVqa,
    Coco,
    Flickr30k,
    HatefulMemes,
    ImageNet,
}

impl Task {
    pub const NAMES: &'static [&'static str] = &[
        "vqav2",
        "vizwiz",
        "textvqa",
        "coco",
        "flickr30k",
        "hateful_memes",
        "imagenet",
    ];

    pub fn parse(s: &str) -> Result<Task, String> {
        Ok(match s {
            "vqav2" => Task::VqaV2,
            "vizwiz" => Task::VizWiz,
            "textvqa" => Task::TextVqa,
            "coco" => Task::Coco,
            "flickr30k" => Task::Flickr30k,
            "hateful_memes" => Task::HatefulMemes,
            "imagenet" => Task::ImageNet,
            "okvqa" => {
                return Err(format!(
                    "task `okvqa` is not available: its answers are stemmed with NLTK's trained \
                     part-of-speech tagger, punkt and WordNet, which this tool cannot reproduce \
                     (their data is not on a package registry); available: {}",
                    Task::NAMES.join(", ")
                ))
            }
            _ => {
                return Err(format!(
                    "unknown task `{s}`; available: {}",
                    Task::NAMES.join(", ")
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::VqaV2 => "vqav2",
            Task::VizWiz => "vizwiz",
            Task::TextVqa => "textvqa",
            Task::Coco => "coco",
            Task::Flickr30k => "flickr30k",
            Task::HatefulMemes => "hateful_memes",
            Task::ImageNet => "imagenet",
        }
    }

    pub fn is_vqa(self) -> bool {
        matches!(self, Task::VqaV2 | Task::VizWiz | Task::TextVqa)
    }

    pub fn is_classification(self) -> bool {
        matches!(self, Task::HatefulMemes | Task::ImageNet)
    }

    /// What the score is, in the paper's units.
    pub fn metric(self) -> &'static str {
        match self {
            Task::VqaV2 | Task::VizWiz | Task::TextVqa => "VQA accuracy",
            Task::Coco | Task::Flickr30k => "CIDEr",
            Task::HatefulMemes => "ROC-AUC",
            Task::ImageNet => "top-1 accuracy",
        }
    }

    /// OpenFlamingo's `max_generation_length` for the task (classification
    /// scores its class names instead: 0).
    pub fn max_new_tokens(self) -> usize {
        match self {
            Task::VqaV2 | Task::VizWiz => 5,
            Task::TextVqa => 10,
            Task::Coco | Task::Flickr30k => 20,
            Task::HatefulMemes | Task::ImageNet => 0,
        }
    }
}

/// One sample: an image and its text. For VQA `text` is the question,
/// `answers` the human answers (the first is a demonstration's answer);
/// for captioning `text` is the first caption, `answers` every caption;
/// for classification `text` is the meme's text (HatefulMemes) or empty,
/// `answers` the class name alone.
#[derive(Clone, Debug)]
pub struct Sample {
    /// `question_id` (VQA) or `image_id` (captioning), as the results name it.
    pub id: Value,
    pub image: PathBuf,
    pub text: String,
    pub answers: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = flamingo_contract::read_text(path, flamingo_contract::MAX_TEXT_BYTES)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
}

fn list<'a>(v: &'a Value, key: &str, path: &Path) -> Result<&'a Vec<Value>, String> {
    v.get(key).and_then(Value::as_array).ok_or_else(|| {
        format!(
            "{}: no `{key}` list: not in the expected format",
            path.display()
        )
    })
}

fn field<'a>(
    v: &'a Value,
    key: &str,
    path: &Path,
    at: usize,
    list: &str,
) -> Result<&'a Value, String> {
    v.get(key)
        .ok_or_else(|| format!("{}: {list}[{at}] has no `{key}`", path.display()))
}

fn string(v: &Value, key: &str, path: &Path, at: usize, list: &str) -> Result<String, String> {
    field(v, key, path, at, list)?
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("{}: {list}[{at}].{key} is not a string", path.display()))
}

/// A VQA split: `questions` (`{"questions": [{"image_id", "question",
/// "question_id"}]}`) and, when given, `annotations` (`{"annotations":
/// [{"question_id", "answers": [{"answer"}]}]}`, in the same order).
/// Images are found as `VQADataset.get_img_path` finds them: VQAv2
/// `COCO_{split}_{image_id:012d}.jpg` in a directory named for the split
/// (`train2014`, `val2014`, `test2015`), VizWiz the `image_id` file name,
/// TextVQA `{image_id}.jpg`.
pub fn vqa(
    task: Task,
    image_dir: &Path,
    questions: &Path,
    annotations: Option<&Path>,
) -> Result<Vec<Sample>, String> {
    let q = read_json(questions)?;
    let qs = list(&q, "questions", questions)?;
    let anns = match annotations {
        Some(a) => {
            let v = read_json(a)?;
            let l = list(&v, "annotations", a)?.clone();
            if l.len() != qs.len() {
                return Err(format!(
                    "{}: {} annotations for the {} questions of {}",
                    a.display(),
                    l.len(),
                    qs.len(),
                    questions.display()
                ));
            }
            Some((a, l))
        }
        None => None,
    };
    let split = image_dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    if task == Task::VqaV2 && !["train2014", "val2014", "test2015"].contains(&split.as_str()) {
        return Err(format!(
            "{}: a VQAv2 image directory is named for its COCO split (train2014, val2014 or test2015)",
            image_dir.display()
        ));
    }
    let mut out = Vec::with_capacity(qs.len());
    for (i, item) in qs.iter().enumerate() {
        let id = field(item, "question_id", questions, i, "questions")?.clone();
        let image_id = field(item, "image_id", questions, i, "questions")?;
        let image = match task {
            Task::VqaV2 => {
                let n = image_id.as_u64().ok_or_else(|| {
                    format!(
                        "{}: questions[{i}].image_id is not a number",
                        questions.display()
                    )
                })?;
                image_dir.join(format!("COCO_{split}_{n:012}.jpg"))
            }
            Task::VizWiz => image_dir.join(image_id.as_str().ok_or_else(|| {
                format!(
                    "{}: questions[{i}].image_id is not a file name",
                    questions.display()
                )
            })?),
            _ => image_dir.join(format!(
                "{}.jpg",
                image_id
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| image_id.to_string())
            )),
        };
        let mut answers = Vec::new();
        if let Some((a, l)) = &anns {
            let ann = &l[i];
            let aid = field(ann, "question_id", a, i, "annotations")?;
            if *aid != id {
                return Err(format!(
                    "{}: annotations[{i}] is for question {aid}, questions[{i}] of {} is {id}: the two files must be in the same order",
                    a.display(),
                    questions.display()
                ));
            }
            for (k, x) in list(ann, "answers", a)
                .map_err(|_| format!("{}: annotations[{i}] has no `answers` list", a.display()))?
                .iter()
                .enumerate()
            {
                answers.push(string(
                    x,
                    "answer",
                    a,
                    k,
                    &format!("annotations[{i}].answers"),
                )?);
            }
        }
        out.push(Sample {
            id,
            image,
            text: string(item, "question", questions, i, "questions")?,
            answers,
        });
    }
    Ok(out)
}

/// A captioning split of a Karpathy JSON (`{"images": [{"split",
/// "filename", "filepath", "cocoid", "sentences": [{"raw"}]}]}`): `train`
/// or `test`. COCO images are `image_dir/filepath/filename` (or
/// `image_dir/filename`), ids the `cocoid`; Flickr30k images
/// `image_dir/filename`, ids the file name without its extension.
pub fn karpathy(
    task: Task,
    image_dir: &Path,
    json: &Path,
    split: &str,
) -> Result<Vec<Sample>, String> {
    let v = read_json(json)?;
    let mut out = Vec::new();
    for (i, img) in list(&v, "images", json)?.iter().enumerate() {
        if img.get("split").and_then(Value::as_str) != Some(split) {
            continue;
        }
        let filename = string(img, "filename", json, i, "images")?;
        let (id, image) = if task == Task::Coco {
            let id = field(img, "cocoid", json, i, "images")?.clone();
            let nested = img
                .get("filepath")
                .and_then(Value::as_str)
                .map(|d| image_dir.join(d).join(&filename));
            let image = match nested {
                Some(p) if p.exists() => p,
                _ => image_dir.join(&filename),
            };
            (id, image)
        } else {
            let stem = filename.split('.').next().unwrap_or_default().to_string();
            (Value::from(stem), image_dir.join(&filename))
        };
        let sentences = list(img, "sentences", json)
            .map_err(|_| format!("{}: images[{i}] has no `sentences` list", json.display()))?;
        let mut answers = Vec::new();
        for (k, s) in sentences.iter().enumerate() {
            answers.push(string(
                s,
                "raw",
                json,
                k,
                &format!("images[{i}].sentences"),
            )?);
        }
        let Some(first) = answers.first().cloned() else {
            return Err(format!("{}: images[{i}] has no sentences", json.display()));
        };
        out.push(Sample {
            id,
            image,
            text: first,
            answers,
        });
    }
    Ok(out)
}

/// COCO caption annotations (`{"annotations": [{"image_id", "caption"}]}`)
/// as the references of each sample, in place of the Karpathy sentences.
pub fn coco_references(samples: &mut [Sample], annotations: &Path) -> Result<(), String> {
    let v = read_json(annotations)?;
    let mut by_id: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (i, a) in list(&v, "annotations", annotations)?.iter().enumerate() {
        let id = field(a, "image_id", annotations, i, "annotations")?.to_string();
        by_id
            .entry(id)
            .or_default()
            .push(string(a, "caption", annotations, i, "annotations")?);
    }
    for s in samples {
        let key = s.id.to_string();
        s.answers = by_id
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("{}: no caption of image {key}", annotations.display()))?;
    }
    Ok(())
}

/// A HatefulMemes split: a JSON-lines file (`{"id", "img", "label",
/// "text"}` per line) whose images are found, as `HatefulMemesDataset`
/// finds them, by the last component of `img` in `image_dir`. The class
/// names are `yes` (label 1) and `no`.
pub fn hateful_memes(image_dir: &Path, jsonl: &Path) -> Result<Vec<Sample>, String> {
    let text = flamingo_contract::read_text(jsonl, flamingo_contract::MAX_TEXT_BYTES)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}: line {}", jsonl.display(), n + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{at}: not a JSON object: {e}"))?;
        let get = |k: &str| v.get(k).ok_or_else(|| format!("{at}: no `{k}`"));
        let img = get("img")?
            .as_str()
            .ok_or_else(|| format!("{at}: `img` is not a string"))?;
        let name = img.rsplit('/').next().unwrap_or(img);
        if name.is_empty() || name == ".." || name == "." {
            return Err(format!("{at}: `img` {img:?} names no file"));
        }
        let label = match get("label")?.as_i64() {
            Some(1) => "yes",
            Some(0) => "no",
            _ => return Err(format!("{at}: `label` must be 0 or 1")),
        };
        out.push(Sample {
            id: get("id")?.clone(),
            image: image_dir.join(name),
            text: get("text")?
                .as_str()
                .ok_or_else(|| format!("{at}: `text` is not a string"))?
                .to_string(),
            answers: vec![label.to_string()],
        });
    }
    if out.is_empty() {
        return Err(format!("{}: no samples", jsonl.display()));
    }
    Ok(out)
}

/// torchvision's `IMG_EXTENSIONS`, as `ImageFolder` matches them
/// (lowercased).
const IMAGE_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// Files under `dir` (sorted, recursively, as `os.walk` with sorted names
/// lists them for `ImageFolder`) with an image extension.
fn image_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if depth > 16 {
        return Err(format!("{}: folders nested too deep", dir.display()));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if IMAGE_EXTENSIONS.iter().any(|e| name.ends_with(e)) {
            out.push(f);
        }
    }
    for d in dirs {
        image_files(&d, depth + 1, out)?;
    }
    Ok(())
}

/// An ImageNet split as torchvision's `ImageFolder` reads it: one folder
/// per class (sorted by name: the WordNet ids, in class-index order), the
/// images under each; `classes[i]` names class `i`. Sample ids are the
/// samples' indices in the split, as `ImageNetDataset` gives them.
pub fn image_folder(root: &Path, classes: &[String]) -> Result<Vec<Sample>, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(format!("{}: no class folders", root.display()));
    }
    if dirs.len() != classes.len() {
        return Err(format!(
            "{}: {} class folders for {} class names",
            root.display(),
            dirs.len(),
            classes.len()
        ));
    }
    let mut out = Vec::new();
    for (dir, class) in dirs.iter().zip(classes) {
        let mut files = Vec::new();
        image_files(dir, 0, &mut files)?;
        for f in files {
            out.push(Sample {
                id: Value::from(out.len()),
                image: f,
                text: String::new(),
                answers: vec![class.clone()],
            });
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{}: no images in the class folders",
            root.display()
        ));
    }
    Ok(out)
}

/// Class names, one per line (blank lines ignored).
pub fn class_names(path: &Path) -> Result<Vec<String>, String> {
    let text = flamingo_contract::read_text(path, flamingo_contract::MAX_TEXT_BYTES)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(format!("{}: no class names", path.display()));
    }
    Ok(names)
}
