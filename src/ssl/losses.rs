//! Loss pieces shared by several methods, real ops or compositions of them, so every backend runs
//! them and the tape differentiates them: whole-tensor sums, the soft-target cross-entropy (SwAV,
//! DINO; a fused op), an InfoNCE over given logits (MoCo), and Sinkhorn-Knopp (SwAV).

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;

/// F.normalize's eps, used by every method that normalises rows.
pub const NORM_EPS: f32 = 1e-12;

/// A constant tensor on `like`'s backend.
pub fn constant<B: Backend>(like: &Tensor<B>, vals: &[f32], shape: &[usize]) -> Result<Var<B>> {
    Ok(Var::constant(Tensor::from_f32(like.backend(), vals, shape, like.dtype())?))
}

/// The sum of every element, as the one-element tensor a loss is.
pub fn total<B: Backend>(t: &Tape<B>, x: &Var<B>) -> Result<Var<B>> {
    let flat = t.reshape(x, &[x.value.numel()])?;
    t.reshape(&t.sum_axis(&flat, 0)?, &[1])
}

/// Layer norm over the last axis without affine parameters (`F.layer_norm(x, (d,), eps=eps)`):
/// MAE's normalised-pixel target and I-JEPA's target tokens.
pub fn layer_norm_plain<B: Backend>(t: &Tape<B>, x: &Var<B>, eps: f32) -> Result<Var<B>> {
    let (b, dt, d) = (x.value.backend(), x.value.dtype(), *x.shape().last().unwrap_or(&1));
    let ones = Var::constant(Tensor::full(b, &[d], 1.0, dt)?);
    let zeros = Var::constant(Tensor::zeros(b, &[d], dt)?);
    t.layernorm(x, &ones, &zeros, eps)
}

/// The mean of every element, as a one-element tensor.
pub fn mean_all<B: Backend>(t: &Tape<B>, x: &Var<B>) -> Result<Var<B>> {
    t.scale(&total(t, x)?, 1.0 / x.value.numel().max(1) as f32)
}

/// mean_r -sum_j q[r, j] log_softmax(x)[r, j], for targets `q` [rows, c] that take no gradient:
/// the fused `soft_cross_entropy` op.
pub fn soft_cross_entropy<B: Backend>(t: &Tape<B>, logits: &Var<B>, q: &Tensor<B>) -> Result<Var<B>> {
    t.soft_cross_entropy(logits, q)
}

/// Cross-entropy of `logits` [rows, c] / `temperature` against class `target(r)` of each row.
pub fn info_nce<B: Backend>(t: &Tape<B>, logits: &Var<B>, temperature: f32, target: impl Fn(usize) -> usize) -> Result<Var<B>> {
    let rows = logits.shape()[0];
    let labels: Vec<f32> = (0..rows).map(|r| target(r) as f32).collect();
    let labels = Tensor::from_f32(logits.value.backend(), &labels, &[rows], logits.value.dtype())?;
    t.cross_entropy(&t.scale(logits, 1.0 / temperature)?, &labels)
}

/// solo-learn's SinkhornKnopp on prototype scores [b, k]: Q = exp(scores / eps), then `iters`
/// times: each prototype's column scaled to total 1/k, then each sample's row to 1/b; returned
/// scaled by b so every row sums to 1. solo-learn first divides Q by its total; the first
/// column scaling cancels that exactly, so it is left out. No gradient: a plain tensor.
pub fn sinkhorn<B: Backend>(scores: &Tensor<B>, eps: f32, iters: usize) -> Result<Tensor<B>> {
    let (b, k) = (scores.shape()[0], scores.shape()[1]);
    let mut q = ops::unary(crate::backend::Unary::Exp, &ops::scale(scores, 1.0 / eps)?)?;
    for _ in 0..iters {
        // Columns: divide by each prototype's sum, then by k.
        q = ops::scale(&ops::div(&q, &ops::sum_axis(&q, 0)?)?, 1.0 / k as f32)?;
        // Rows: on the transpose, so the per-sample sums broadcast as a suffix.
        let qt = ops::permute(&q, &[1, 0])?;
        let qt = ops::scale(&ops::div(&qt, &ops::sum_axis(&qt, 0)?)?, 1.0 / b as f32)?;
        q = ops::permute(&qt, &[1, 0])?;
    }
    ops::scale(&q, b as f32)
}

/// The mean of one-element losses.
pub fn mean_of<B: Backend>(t: &Tape<B>, terms: &[Var<B>]) -> Result<Var<B>> {
    let mut sum = terms.first().cloned().ok_or_else(|| crate::error::Error::Invalid { op: "loss", msg: "no loss terms".into() })?;
    for term in &terms[1..] {
        sum = t.add(&sum, term)?;
    }
    t.scale(&sum, 1.0 / terms.len() as f32)
}
