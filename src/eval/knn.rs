//! The weighted kNN classifier (InstDisc style, as the SimSiam/MoCo CIFAR demos and lightly):
//! L2-normalised features; for each test sample the k most cosine-similar bank samples vote for
//! their class with weight exp(sim / T); the class with the largest summed weight wins.
//! Similarities are computed with the backend's matmul, a block of test rows at a time.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{DType, Tensor};

/// Rows of unit length (zero rows stay zero).
pub fn l2_normalize(x: &mut [f32], dim: usize) {
    for row in x.chunks_mut(dim) {
        let n = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        if n > 0.0 {
            for v in row.iter_mut() {
                *v = (*v as f64 / n) as f32;
            }
        }
    }
}

/// Class scores [test_rows, classes] of the weighted kNN vote. Features must be L2-normalised.
#[allow(clippy::too_many_arguments)]
pub fn knn_scores<B: Backend>(
    b: &B,
    bank: &[f32],
    bank_labels: &[u32],
    test: &[f32],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
) -> Result<Vec<f32>> {
    let n_bank = bank_labels.len();
    if dim == 0 || bank.len() != n_bank * dim || !test.len().is_multiple_of(dim) || n_bank == 0 {
        return Err(Error::Invalid {
            op: "knn",
            msg: format!("bank {} values for {n_bank} labels of dim {dim}, test {} values", bank.len(), test.len()),
        });
    }
    if let Some(&l) = bank_labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::Invalid { op: "knn", msg: format!("bank label {l} is not below {classes} classes") });
    }
    let k = k.min(n_bank).max(1);
    let n_test = test.len() / dim;
    let bank_t = Tensor::from_f32(b, bank, &[n_bank, dim], DType::F32)?;
    let mut scores = vec![0.0f32; n_test * classes];
    const BLOCK: usize = 256;
    for start in (0..n_test).step_by(BLOCK) {
        let rows = BLOCK.min(n_test - start);
        let q = Tensor::from_f32(b, &test[start * dim..(start + rows) * dim], &[rows, dim], DType::F32)?;
        let sim = ops::matmul(&q, &bank_t, false, true)?.to_f32()?; // [rows, n_bank]
        for r in 0..rows {
            let row = &sim[r * n_bank..(r + 1) * n_bank];
            let mut idx: Vec<usize> = (0..n_bank).collect();
            // Top k by similarity; ties broken by bank order so results are deterministic.
            idx.select_nth_unstable_by(k - 1, |&a, &c| row[c].total_cmp(&row[a]).then(a.cmp(&c)));
            let out = &mut scores[(start + r) * classes..(start + r + 1) * classes];
            for &j in &idx[..k] {
                out[bank_labels[j] as usize] += (row[j] / temperature).exp();
            }
        }
    }
    Ok(scores)
}

/// Index of the largest score per row (the first one on ties).
pub fn argmax_rows(scores: &[f32], classes: usize) -> Vec<u32> {
    scores
        .chunks(classes)
        .map(|r| r.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32)
        .collect()
}

/// kNN top-1 accuracy in [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy<B: Backend>(
    b: &B,
    bank: &[f32],
    bank_labels: &[u32],
    test: &[f32],
    test_labels: &[u32],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
) -> Result<f64> {
    let s = knn_scores(b, bank, bank_labels, test, dim, classes, k, temperature)?;
    let pred = argmax_rows(&s, classes);
    Ok(pred.iter().zip(test_labels).filter(|(p, l)| p == l).count() as f64 / test_labels.len().max(1) as f64)
}
