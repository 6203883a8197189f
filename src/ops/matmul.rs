//! Batched matrix multiply: checks the inner and batch dims of op(a) . op(b).

use crate::backend::*;
use crate::error::{Result, shape_err};
use crate::tensor::Tensor;

use super::{out, same_dtype, split_matrix};

/// op(a) . op(b) over matching leading (batch) dims: a [.., m, k] (or [.., k, m] with trans_a).
pub fn matmul<B: Backend>(a: &Tensor<B>, b: &Tensor<B>, trans_a: bool, trans_b: bool) -> Result<Tensor<B>> {
    const OP: &str = "matmul";
    same_dtype(OP, &[a, b])?;
    let (ba, ra, ca) = split_matrix(OP, a.shape())?;
    let (bb, rb, cb) = split_matrix(OP, b.shape())?;
    let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (k2, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if k != k2 || a.shape()[..a.dims() - 2] != b.shape()[..b.dims() - 2] || ba != bb {
        return Err(shape_err(OP, format!("inner or batch dims differ (trans_a={trans_a}, trans_b={trans_b})"), &[a.shape(), b.shape()]));
    }
    let mut shape = a.shape()[..a.dims() - 2].to_vec();
    shape.extend([m, n]);
    let c = out(a, &shape)?;
    let d = MatmulDims { batch: ba, m, n, k, trans_a, trans_b };
    a.backend().matmul(a.storage(), b.storage(), c.storage(), &d)?;
    Ok(c)
}
