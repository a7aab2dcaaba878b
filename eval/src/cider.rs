//! CIDEr-D as pycocoevalcap 1.2 computes it (`cider/cider_scorer.py`, the
//! metric COCO's caption evaluation and OpenFlamingo report): n-grams 1..4
//! of the PTB-tokenised captions ([`crate::ptb`]), tf-idf weights with
//! document frequencies from the references of the whole corpus, the
//! hypothesis' weights clipped by the reference's, a Gaussian penalty
//! (sigma 6) on the length difference, the mean over n and references,
//! times 10.
//!
//! As in the reference, the "length" of the penalty counts bigrams, not
//! words (`if n == 1: length += term_freq`, `n` being the n-gram's length
//! minus one).

use std::collections::HashMap;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// Each n-gram (its words joined by spaces) with its count and its n.
type Counts = HashMap<String, (f64, usize)>;

fn ngrams(sentence: &str) -> Counts {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let mut c = Counts::new();
    for k in 1..=N {
        for w in words.windows(k) {
            c.entry(w.join(" ")).or_insert((0.0, k)).0 += 1.0;
        }
    }
    c
}

struct Vector<'a> {
    /// tf-idf weight of each n-gram, by n - 1
    vec: [HashMap<&'a str, f64>; N],
    norm: [f64; N],
    length: f64,
}

/// The tf-idf vector of one caption's n-gram counts.
fn vector<'a>(c: &'a Counts, df: &HashMap<&str, f64>, ref_len: f64) -> Vector<'a> {
    let mut v = Vector {
        vec: Default::default(),
        norm: [0.0; N],
        length: 0.0,
    };
    for (g, &(tf, k)) in c {
        let n = k - 1;
        let w = tf * (ref_len - df.get(g.as_str()).copied().unwrap_or(0.0).max(1.0).ln());
        v.vec[n].insert(g.as_str(), w);
        v.norm[n] += w * w;
        if n == 1 {
            v.length += tf;
        }
    }
    v.norm = v.norm.map(f64::sqrt);
    v
}

/// One image: the tokenised hypothesis and references.
pub struct Item<'a> {
    pub hypothesis: &'a str,
    pub references: &'a [String],
}

/// The CIDEr-D of each item and their mean (pycocoevalcap's scale: 1.0 is
/// "100" as papers print it), document frequencies taken over `items`.
pub fn cider(items: &[Item]) -> (f64, Vec<f64>) {
    let tests: Vec<Counts> = items.iter().map(|i| ngrams(i.hypothesis)).collect();
    let refs: Vec<Vec<Counts>> = items
        .iter()
        .map(|i| i.references.iter().map(|r| ngrams(r)).collect())
        .collect();
    // document frequency: in how many images' references an n-gram occurs
    let mut df: HashMap<&str, f64> = HashMap::new();
    for rs in &refs {
        let mut seen: Vec<&str> = rs
            .iter()
            .flat_map(|r| r.keys().map(String::as_str))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for g in seen {
            *df.entry(g).or_default() += 1.0;
        }
    }
    let ref_len = (items.len() as f64).ln();
    let scores: Vec<f64> = tests
        .iter()
        .zip(&refs)
        .map(|(t, rs)| {
            let h = vector(t, &df, ref_len);
            let mut score = [0.0f64; N];
            for r in rs {
                let r = vector(r, &df, ref_len);
                let delta = h.length - r.length;
                for (n, s) in score.iter_mut().enumerate() {
                    let mut val: f64 = h.vec[n]
                        .iter()
                        .map(|(g, w)| {
                            let rw = r.vec[n].get(g).copied().unwrap_or(0.0);
                            w.min(rw) * rw
                        })
                        .sum();
                    if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
                        val /= h.norm[n] * r.norm[n];
                    }
                    *s += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                }
            }
            let mean = score.iter().sum::<f64>() / N as f64;
            if rs.is_empty() {
                0.0
            } else {
                mean / rs.len() as f64 * 10.0
            }
        })
        .collect();
    let mean = if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    (mean, scores)
}

/// CIDEr-D of raw captions as COCOEvalCap computes it: the references of
/// every image PTB-tokenised in one run, the hypotheses in another
/// ([`crate::ptb::coco_batch`]), then [`cider`].
pub fn coco(hypotheses: &[&str], references: &[&[String]]) -> (f64, Vec<f64>) {
    let flat: Vec<&str> = references
        .iter()
        .flat_map(|r| r.iter().map(String::as_str))
        .collect();
    let flat = crate::ptb::coco_batch(&flat);
    let hyps = crate::ptb::coco_batch(hypotheses);
    let mut at = 0;
    let grouped: Vec<&[String]> = references
        .iter()
        .map(|r| {
            let g = &flat[at..at + r.len()];
            at += r.len();
            g
        })
        .collect();
    let items: Vec<Item> = hyps
        .iter()
        .zip(grouped)
        .map(|(h, r)| Item {
            hypothesis: h,
            references: r,
        })
        .collect();
    cider(&items)
}
