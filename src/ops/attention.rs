//! Scaled dot-product attention over (batch, head) slices, with the row log-sum-exp that its
//! backward reads.

use crate::backend::*;
use crate::error::{Result, shape_err};
use crate::tensor::Tensor;

use super::{expect_shape, out, same_dtype, split_matrix};

fn attn_dims<B: Backend>(q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>, scale: f32) -> Result<AttnDims> {
    const OP: &str = "attention";
    same_dtype(OP, &[q, k, v])?;
    let (bq, tq, dq) = split_matrix(OP, q.shape())?;
    let (bk, tk, dk) = split_matrix(OP, k.shape())?;
    if k.shape() != v.shape() || bq != bk || dq != dk || q.shape()[..q.dims() - 2] != k.shape()[..k.dims() - 2] {
        return Err(shape_err(OP, "q [.., tq, d], k and v [.., tk, d] must agree", &[q.shape(), k.shape(), v.shape()]));
    }
    // A softmax over no keys is 0 / 0: refused here rather than returned as NaN.
    if tk == 0 && tq > 0 {
        return Err(shape_err(OP, "no keys (tk = 0): every query's softmax would be empty", &[q.shape(), k.shape()]));
    }
    Ok(AttnDims { bh: bq, tq, tk, d: dq, scale })
}

/// softmax(scale q k^T) v over every leading (batch, head) slice; also returns the row log-sum-exp.
pub fn attention<B: Backend>(q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>, scale: f32) -> Result<(Tensor<B>, Tensor<B>)> {
    let d = attn_dims(q, k, v, scale)?;
    let o = out(q, q.shape())?;
    let lse = out(q, &q.shape()[..q.dims() - 1])?;
    q.backend().attention_fwd(q.storage(), k.storage(), v.storage(), o.storage(), lse.storage(), &d)?;
    Ok((o, lse))
}

/// Returns (dq, dk, dv).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    o: &Tensor<B>,
    lse: &Tensor<B>,
    dout: &Tensor<B>,
    scale: f32,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let d = attn_dims(q, k, v, scale)?;
    expect_shape("attention_bwd", "dout", dout, q.shape())?;
    let (dq, dk, dv) = (out(q, q.shape())?, out(k, k.shape())?, out(v, v.shape())?);
    q.backend().attention_bwd(
        q.storage(),
        k.storage(),
        v.storage(),
        o.storage(),
        lse.storage(),
        dout.storage(),
        dq.storage(),
        dk.storage(),
        dv.storage(),
        &d,
    )?;
    Ok((dq, dk, dv))
}
