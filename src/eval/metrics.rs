//! Classification metrics from class scores: top-1/top-5, macro and micro accuracy, and
//! macro and micro one-vs-rest ROC AUC (scikit-learn's definitions).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub top1: f64,
    pub top5: f64,
    /// Mean over classes of per-class recall (balanced accuracy).
    pub macro_accuracy: f64,
    /// Over all samples (equals top-1).
    pub micro_accuracy: f64,
    /// Mean over classes of the one-vs-rest AUC.
    pub macro_auc: f64,
    /// AUC of all (sample, class) pairs pooled: scikit-learn's average='micro'.
    pub micro_auc: f64,
}

impl Metrics {
    /// The metrics as the `eval` commands print them: a title, then top-1/top-5, accuracy and AUC.
    pub fn report(&self, title: &str) -> String {
        let pct = |v: f64| format!("{:.2}%", 100.0 * v);
        format!(
            "{title}\n  top-1 {}   top-5 {}\n  accuracy: macro {}  micro {}\n  one-vs-rest AUC: macro {:.4}  micro {:.4}\n",
            pct(self.top1),
            pct(self.top5),
            pct(self.macro_accuracy),
            pct(self.micro_accuracy),
            self.macro_auc,
            self.micro_auc
        )
    }
}

/// Mann-Whitney AUC: the probability a positive outranks a negative, ties counting half.
/// Equals the area under the ROC curve with ties handled as scikit-learn does.
pub fn auc(scores: &[f64], positive: &[bool]) -> f64 {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += idx[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * avg;
        i = j + 1;
    }
    (rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos as f64 * n_neg as f64)
}

/// Metrics of `scores` [n, classes] (higher = more likely) against `labels`.
pub fn classification_metrics(scores: &[f32], labels: &[u32], classes: usize) -> Metrics {
    let n = labels.len();
    if n == 0 || classes == 0 {
        return Metrics::default();
    }
    let mut top1 = 0;
    let mut top5 = 0;
    let mut per_class_hits = vec![0usize; classes];
    let mut per_class_n = vec![0usize; classes];
    for (i, &l) in labels.iter().enumerate() {
        let row = &scores[i * classes..(i + 1) * classes];
        let target = row[l as usize];
        // Rank of the true class: how many classes score strictly higher (ties favour earlier).
        let higher = row.iter().enumerate().filter(|&(c, &v)| v > target || (v == target && c < l as usize)).count();
        if higher == 0 {
            top1 += 1;
            per_class_hits[l as usize] += 1;
        }
        if higher < 5 {
            top5 += 1;
        }
        per_class_n[l as usize] += 1;
    }
    let present: Vec<usize> = (0..classes).filter(|&c| per_class_n[c] > 0).collect();
    let macro_accuracy = present.iter().map(|&c| per_class_hits[c] as f64 / per_class_n[c] as f64).sum::<f64>() / present.len() as f64;
    let mut aucs = Vec::new();
    let mut pooled_scores = Vec::with_capacity(n * classes);
    let mut pooled_pos = Vec::with_capacity(n * classes);
    for c in 0..classes {
        let s: Vec<f64> = (0..n).map(|i| scores[i * classes + c] as f64).collect();
        let p: Vec<bool> = labels.iter().map(|&l| l as usize == c).collect();
        let a = auc(&s, &p);
        if a.is_finite() {
            aucs.push(a);
        }
        pooled_scores.extend(s);
        pooled_pos.extend(p);
    }
    Metrics {
        top1: top1 as f64 / n as f64,
        top5: top5 as f64 / n as f64,
        macro_accuracy,
        micro_accuracy: top1 as f64 / n as f64,
        macro_auc: if aucs.is_empty() { f64::NAN } else { aucs.iter().sum::<f64>() / aucs.len() as f64 },
        micro_auc: auc(&pooled_scores, &pooled_pos),
    }
}

/// Row-wise softmax, for turning logits into the probabilities AUCs are usually reported on.
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_mut(classes) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let s: f32 = row
            .iter_mut()
            .map(|v| {
                *v = (*v - m).exp();
                *v
            })
            .sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    out
}
