"""Reference values for flamingo-eval's metrics, from the reference code itself.

Writes eval/tests/data/metrics.json: synthetic VQA answers and captions with
what open_flamingo 2.0.1's `vqa_metric.py` (VQAEval, run through its files as
`compute_vqa_accuracy` runs it, unrounded) and pycocoevalcap 1.2 (Stanford
CoreNLP 3.4.1's PTBTokenizer through Java, then Cider, as COCOEvalCap runs
them) give for them, plus the post-processing functions on a table of cases,
ROC-AUC as scikit-learn's `roc_auc_score` gives it (HatefulMemes' metric, with
`evaluate_classification`'s scores of the `yes` class), and the prompts of
open_flamingo 2.0.1's eval model (`open_flamingo/eval/models/open_flamingo.py`,
which the wheel leaves out: its prompt methods are read from the 2.0.1 tag).
The Rust tests read this file; this script is not run by CI.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install numpy pycocotools scikit-learn
    pip download --no-deps open_flamingo==2.0.1 pycocoevalcap==1.2
    unzip the two wheels into DIR (Java 8+ on the PATH);
    git show 2.0.1:open_flamingo/eval/models/open_flamingo.py > MODEL.py
    (in a clone of mlfoundations/open_flamingo), then
    /tmp/v/bin/python eval/reference/metrics.py DIR MODEL.py
"""

import json
import os
import random
import sys
import tempfile

import importlib.util  # noqa: E402

sys.path.insert(0, sys.argv[1])


def by_path(name, rel):
    # the modules alone: `import open_flamingo` would import torch
    spec = importlib.util.spec_from_file_location(name, os.path.join(sys.argv[1], rel))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


vqa_metric = by_path("vqa_metric", "open_flamingo/eval/vqa_metric.py")
coco_metric = by_path("coco_metric", "open_flamingo/eval/coco_metric.py")
postprocess_captioning_generation = coco_metric.postprocess_captioning_generation
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402

rng = random.Random(20261202)

PIECES = [
    "yes", "no", "two", "2", "the dog", "a cat", "an apple", "Dont", "isnt",
    "it's", "red.", "3.5", "1,000", "10:30", "u.s.", "t-shirt", "left/right",
    "(blue)", "what's up?", "hot dog!", "ten", "none", "zero", "x-ray",
    "black and white", "Im", "yall", "somebody'd", "man's", "ow's'at",
    '"quoted"', "a_b", "e-mail", "1.5.", "end.", "...", "3 ,4", "a,b", "#1",
    "50%", "$5", "c++", "o'clock", "oclock", "", "The", "AN", "Two dogs",
    "whats", "cant", "won't", "a.m.", "p.m", "[x]", "{y}", "<z>", "@home",
    "a=b", "1+1", "back\\slash", "semi;colon", "mr. smith", "wasnt", "one",
]


def answer():
    n = rng.choice([1, 1, 1, 2, 2, 3])
    sep = rng.choice([" ", " ", ", ", "-", " - ", ",", "  "])
    s = sep.join(rng.choice(PIECES) for _ in range(n))
    if rng.random() < 0.2:
        s = s.upper() if rng.random() < 0.5 else s.title()
    if rng.random() < 0.15:
        s = rng.choice([" ", "\n", "\t", "  "]) + s + rng.choice(["", " ", "\n", "\t"])
    if rng.random() < 0.1:
        s = s + rng.choice([".", "?", "!", " ."])
    return s


def vqa_cases(n=300):
    questions, annotations, results = [], [], []
    for qid in range(1, n + 1):
        pool = [answer() for _ in range(rng.choice([1, 2, 3, 4]))]
        humans = [rng.choice(pool) for _ in range(10)]
        r = rng.random()
        if r < 0.45:
            pred = rng.choice(pool)
        elif r < 0.6:
            pred = rng.choice(pool).upper() + rng.choice(["", ".", " ", "!"])
        elif r < 0.7:
            pred = "the " + rng.choice(pool)
        elif r < 0.8:
            pred = ""
        else:
            pred = answer()
        questions.append({"image_id": qid, "question": f"q{qid}?", "question_id": qid})
        annotations.append({
            "question_id": qid, "image_id": qid, "question_type": "what",
            "answer_type": "other", "multiple_choice_answer": humans[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(humans)],
        })
        results.append({"question_id": qid, "answer": pred})
    meta = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
            "data_subtype": "val2014", "license": {}}
    d = tempfile.mkdtemp()
    paths = {}
    for name, v in [("q", dict(meta, questions=questions)),
                    ("a", dict(meta, annotations=annotations)), ("r", results)]:
        paths[name] = os.path.join(d, name + ".json")
        with open(paths[name], "w") as f:
            json.dump(v, f)
    vqa = vqa_metric.VQA(paths["a"], paths["q"])
    res = vqa.loadRes(paths["r"], paths["q"])
    ev = vqa_metric.VQAEval(vqa, res, n=2)
    per, overall = {}, {}
    ev.setEvalQA = lambda q, acc: per.__setitem__(q, acc)
    ev.setAccuracy = lambda acc, *_: overall.__setitem__("v", 100 * sum(acc) / len(acc))
    ev.evaluate()
    fresh = vqa_metric.VQAEval(None, None)
    normalize = lambda s: fresh.processDigitArticle(fresh.processPunctuation(s))  # noqa: E731
    cases = []
    for q, a, r in zip(questions, annotations, results):
        cases.append({
            "question_id": q["question_id"],
            "answers": [x["answer"] for x in a["answers"]],
            "prediction": r["answer"],
            "normalized": normalize(r["answer"].replace("\n", " ").replace("\t", " ").strip()),
            "accuracy": per[q["question_id"]],
        })
    return {"cases": cases, "overall": overall["v"]}


WORDS = ["a", "man", "woman", "dog", "cat", "riding", "on", "the", "beach", "two",
         "people", "standing", "near", "red", "bus", "is", "sitting", "in", "of",
         "with", "table", "pizza", "and", "street", "an", "giraffe", "eating",
         "grass", "it's", "don't", "they're", "I'm", "we'll", "you've", "can't",
         "mr.", "U.S.", "3.5", "1,000", "(blue)", "\"big\"", "'small'", "--", "...",
         "e-mail", "t-shirt", "5%", "$10", "&", "a/b", "10:30", "O'Neil", "St.",
         "children's", "isn't", "it", "Dogs", "Bus", "A", "over", "under", "tennis"]


def caption():
    n = rng.randint(1, 14)
    words = [rng.choice(WORDS) for _ in range(n)]
    s = " ".join(words)
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:]
    p = rng.random()
    if p < 0.5:
        s += "."
    elif p < 0.6:
        s += " ."
    elif p < 0.7:
        s += "!"
    elif p < 0.75:
        s += "?"
    if rng.random() < 0.2:
        s = s.replace(" ", ", ", 1)
    return s


def cider_cases(n=250):
    gts, res = {}, {}
    for i in range(n):
        refs = [caption() for _ in range(rng.choice([1, 3, 5, 5, 5]))]
        r = rng.random()
        if r < 0.4:
            hyp = rng.choice(refs)
        elif r < 0.5:
            hyp = rng.choice(refs).lower().rstrip(".")
        elif r < 0.55:
            hyp = ""
        else:
            hyp = caption()
        gts[i] = [{"caption": c} for c in refs]
        res[i] = [{"caption": hyp}]
    tok = PTBTokenizer()
    gts_t = tok.tokenize(gts)
    res_t = tok.tokenize(res)
    score, scores = Cider().compute_score(gts_t, res_t)
    cases = [{
        "id": i,
        "references": [c["caption"] for c in gts[i]],
        "hypothesis": res[i][0]["caption"],
        "references_tokenized": gts_t[i],
        "hypothesis_tokenized": res_t[i][0],
        "cider": float(scores[k]),
    } for k, i in enumerate(gts)]
    return {"cases": cases, "cider": float(score)}


POST_VQA = ["yes", "yes Question: what", "two, three", "a cat, a dog, a bird",
            "red Answer: blue", "Short answer: x", "no,  maybe", " blue ",
            "QuestionAnswer", "left, right Short", "", "a,b, c", "3, 4 Question"]
POST_CAPTION = ["A dog on a beach.", "A cat. Output: another", "Outputs", "x Output y Output z",
                "", " spaced Output:", "Output"]

def auc_cases(n=60):
    """Random labels and scores (with ties), and HatefulMemes' path: per
    sample the mean log-probabilities of `no` and `yes`, the top class's
    probability among the two, flipped when the top class is `no`."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    cases = []
    for _ in range(n):
        m = rng.randint(2, 80)
        labels = [rng.random() < rng.choice([0.2, 0.5, 0.7]) for _ in range(m)]
        if all(labels) or not any(labels):
            labels[0] = not labels[0]
        digits = rng.choice([1, 2, 8])
        scores = [round(rng.random(), digits) for _ in range(m)]
        gts = ["yes" if x else "no" for x in labels]
        cases.append({"labels": labels, "scores": scores, "auc": float(roc_auc_score(gts, scores))})
    memes = []
    for _ in range(20):
        m = rng.randint(4, 50)
        labels = [rng.random() < 0.4 for _ in range(m)]
        labels[0], labels[1] = True, False
        logprobs = [[-rng.random() * 4, -rng.random() * 4] for _ in range(m)]
        classes = ["no", "yes"]
        greater = max(classes)
        pred = []
        for lp in logprobs:
            lp = np.array(lp)
            top = int(np.argmax(lp))
            score = float(np.exp(lp[top] - np.logaddexp.reduce(lp)))
            pred.append(score if classes[top] == greater else 1 - score)
        gts = ["yes" if x else "no" for x in labels]
        memes.append({"labels": labels, "logprobs": logprobs, "auc": float(roc_auc_score(gts, pred))})
    return {"cases": cases, "hateful_memes": memes}


def prompt_cases(path):
    """The eval model's prompt methods, run on a table of inputs."""
    import ast

    tree = ast.parse(open(path).read())
    wanted = {"get_vqa_prompt", "get_caption_prompt", "get_imagenet_prompt", "get_hateful_memes_prompt"}
    ns = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in wanted:
            exec(compile(ast.Module([node], []), path, "exec"), ns)
    assert set(ns) >= wanted, sorted(ns)
    texts = ["What is it?", "it's 'quoted'", "", "two\nlines", "emoji \u2603"]
    out = []
    for t in texts:
        for a in [None, "a cat", ""]:
            out.append({"fn": "vqa", "text": t, "label": a, "prompt": ns["get_vqa_prompt"](None, t, a)})
            out.append({"fn": "hateful_memes", "text": t, "label": a,
                        "prompt": ns["get_hateful_memes_prompt"](None, t, a)})
    for a in [None, "tench", "great white shark", ""]:
        out.append({"fn": "caption", "text": "", "label": a, "prompt": ns["get_caption_prompt"](None, a)})
        out.append({"fn": "imagenet", "text": "", "label": a, "prompt": ns["get_imagenet_prompt"](None, a)})
    return out


out = {
    "vqa": vqa_cases(),
    "cider": cider_cases(),
    "roc_auc": auc_cases(),
    "prompts": prompt_cases(sys.argv[2]),
    "postprocess_vqa": [[s, vqa_metric.postprocess_vqa_generation(s)] for s in POST_VQA],
    "postprocess_captioning": [[s, postprocess_captioning_generation(s)] for s in POST_CAPTION],
}
dst = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "metrics.json")
os.makedirs(os.path.dirname(dst), exist_ok=True)
with open(dst, "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
print("vqa overall", out["vqa"]["overall"], "cider", out["cider"]["cider"])
