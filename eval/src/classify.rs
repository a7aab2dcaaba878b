//! Classification by close-ended scoring, as OpenFlamingo's
//! `evaluate_classification` scores it: each class name's mean token
//! log-probability after the prompt, the top-k classes, the top class's
//! probability among the classes (`exp(top - logsumexp)`), and from those
//! top-1/top-5 accuracy (ImageNet) or ROC-AUC (HatefulMemes, as
//! scikit-learn's `roc_auc_score` computes it).

/// OpenFlamingo's `HM_CLASSNAMES`.
pub const HATEFUL_MEMES_CLASSES: [&str; 2] = ["no", "yes"];

/// OpenFlamingo's `IMAGENET_CLASSNAMES`: the 1000 ImageNet-1k class names
/// in class-index order (the sorted WordNet ids of the class folders).
pub fn imagenet_classes() -> Vec<String> {
    include_str!("../data/imagenet_classnames.txt")
        .lines()
        .map(String::from)
        .collect()
}

/// The indices of the `k` highest scores, highest first; ties go to the
/// lower index.
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `log(sum(exp(x)))`, stable.
pub fn logsumexp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The probability of class `i` among all classes: `exp(x_i - logsumexp(x))`.
pub fn class_probability(scores: &[f64], i: usize) -> f64 {
    (scores[i] - logsumexp(scores)).exp()
}

/// HatefulMemes' score of a sample for its ROC-AUC, as
/// `evaluate_classification` derives it: the top class's probability
/// among the classes when the top class is the greater class name
/// (`yes`), else one minus it.
pub fn positive_probability(scores: &[f64], classes: &[String]) -> f64 {
    let top = top_k(scores, 1)[0];
    let p = class_probability(scores, top);
    if classes.iter().max() == Some(&classes[top]) {
        p
    } else {
        1.0 - p
    }
}

/// The area under the ROC curve of `scores` for the positives `labels`:
/// the probability that a positive outscores a negative, a tie counting
/// half (what `roc_auc_score`'s trapezoids over its curve add up to).
/// Both classes must be present, as scikit-learn requires.
pub fn roc_auc(labels: &[bool], scores: &[f64]) -> Result<f64, String> {
    if labels.len() != scores.len() {
        return Err(format!(
            "{} labels for {} scores",
            labels.len(),
            scores.len()
        ));
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(format!("score {i} is NaN"));
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(format!(
            "ROC-AUC needs both classes among the samples; these have {pos} positive and {neg} negative"
        ));
    }
    // ranks 1..=n with ties given their mean rank: the Mann-Whitney U of
    // the positives
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mean_rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Ok((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_reversed_and_tied_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&labels, &[0.1, 0.2, 0.8, 0.9]), Ok(1.0));
        assert_eq!(roc_auc(&labels, &[0.9, 0.8, 0.2, 0.1]), Ok(0.0));
        assert_eq!(roc_auc(&labels, &[0.5; 4]), Ok(0.5));
        // one positive below one negative of four pairs
        assert_eq!(roc_auc(&labels, &[0.1, 0.6, 0.5, 0.9]), Ok(0.75));
        assert!(roc_auc(&[true, true], &[0.1, 0.2]).is_err());
        assert!(roc_auc(&[true, false], &[f64::NAN, 0.2]).is_err());
    }

    #[test]
    fn top_k_breaks_ties_by_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert!((class_probability(&[0.0, 0.0], 1) - 0.5).abs() < 1e-15);
        assert_eq!(imagenet_classes().len(), 1000);
        assert_eq!(imagenet_classes()[0], "tench");
    }
}
