//! Moving data without arithmetic: permute, slice, slice assignment, concatenation and the
//! per-row gather (with its scatter back, which sums).

use crate::backend::*;
use crate::error::{Error, Result, shape_err};
use crate::tensor::{Tensor, numel};

use super::{expect_shape, out, same_dtype};

pub fn permute<B: Backend>(x: &Tensor<B>, perm: &[usize]) -> Result<Tensor<B>> {
    same_dtype("permute", &[x])?;
    let mut seen = vec![false; x.dims()];
    if perm.len() != x.dims() || perm.iter().any(|&p| p >= x.dims() || std::mem::replace(&mut seen[p], true)) {
        return Err(shape_err("permute", format!("{perm:?} is not a permutation of the axes"), &[x.shape()]));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let y = out(x, &shape)?;
    if x.numel() > 0 {
        x.backend().permute(x.storage(), y.storage(), x.shape(), perm)?;
    }
    Ok(y)
}

/// The inverse permutation (for the gradient of a permute).
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

fn slice_dims(op: &'static str, shape: &[usize], axis: usize, start: usize, len: usize) -> Result<SliceDims> {
    if axis >= shape.len() || start + len > shape[axis] {
        return Err(shape_err(op, format!("range {start}..{} on axis {axis} out of bounds", start + len), &[shape]));
    }
    Ok(SliceDims { outer: numel(&shape[..axis]), axis: shape[axis], start, len, inner: numel(&shape[axis + 1..]) })
}

/// x[.., start..start+len, ..] along `axis`.
pub fn slice<B: Backend>(x: &Tensor<B>, axis: usize, start: usize, len: usize) -> Result<Tensor<B>> {
    same_dtype("slice", &[x])?;
    let d = slice_dims("slice", x.shape(), axis, start, len)?;
    let mut shape = x.shape().to_vec();
    shape[axis] = len;
    let y = out(x, &shape)?;
    x.backend().slice(x.storage(), y.storage(), &d)?;
    Ok(y)
}

/// Writes `src` into `dst[.., start..start+len, ..]` in place.
pub fn slice_assign<B: Backend>(dst: &Tensor<B>, src: &Tensor<B>, axis: usize, start: usize) -> Result<()> {
    same_dtype("slice_assign", &[dst, src])?;
    let len = src.shape().get(axis).copied().unwrap_or(0);
    let d = slice_dims("slice_assign", dst.shape(), axis, start, len)?;
    let mut want = dst.shape().to_vec();
    want[axis] = len;
    expect_shape("slice_assign", "source", src, &want)?;
    if dst.same_storage(src) {
        return Err(Error::Invalid { op: "slice_assign", msg: "source and destination share a buffer".into() });
    }
    dst.backend().slice_assign(src.storage(), dst.storage(), &d)
}

/// Concatenation along `axis`; all other dims must agree.
pub fn concat<B: Backend>(xs: &[&Tensor<B>], axis: usize) -> Result<Tensor<B>> {
    let Some(first) = xs.first() else {
        return Err(Error::Invalid { op: "concat", msg: "no tensors given".into() });
    };
    same_dtype("concat", xs)?;
    let mut shape = first.shape().to_vec();
    let shapes: Vec<&[usize]> = xs.iter().map(|t| t.shape()).collect();
    let ok =
        axis < shape.len() && xs.iter().all(|t| t.dims() == shape.len() && (0..shape.len()).all(|a| a == axis || t.shape()[a] == shape[a]));
    if !ok {
        return Err(shape_err("concat", format!("shapes disagree off axis {axis}"), &shapes));
    }
    shape[axis] = xs.iter().map(|t| t.shape()[axis]).sum();
    let y = out(first, &shape)?;
    let mut start = 0;
    for t in xs {
        slice_assign(&y, t, axis, start)?;
        start += t.shape()[axis];
    }
    Ok(y)
}

/// The dims of a per-row gather from `x` [n, l, ..] (the trailing axes flattened into d) with
/// indices [n, k].
fn gather_dims(op: &'static str, shape: &[usize], l: usize, idx: &[usize]) -> Result<GatherDims> {
    if shape.len() < 2 || idx.len() != 2 || idx[0] != shape[0] {
        return Err(shape_err(op, "needs x [n, l, ..] and indices [n, k]", &[shape, idx]));
    }
    Ok(GatherDims { n: shape[0], l, k: idx[1], d: numel(&shape[2..]) })
}

/// MAE's token selection: y [n, k, ..] with y[i, j] = x[i, idx[i, j]] for x [n, l, ..] and
/// `idx` [n, k] holding row indices in 0..l stored as floats, in x's dtype (as cross_entropy's
/// labels). An index may repeat. One that is not an integer in 0..l is an error on the CPU and
/// gives NaN rows on the GPUs (the check would need a read-back).
pub fn gather_rows<B: Backend>(x: &Tensor<B>, idx: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("gather_rows", &[x, idx])?;
    let d = gather_dims("gather_rows", x.shape(), x.shape().get(1).copied().unwrap_or(0), idx.shape())?;
    let mut shape = x.shape().to_vec();
    shape[1] = d.k;
    let y = out(x, &shape)?;
    if y.numel() > 0 {
        x.backend().gather_rows(x.storage(), idx.storage(), y.storage(), &d)?;
    }
    Ok(y)
}

/// The gradient of `gather_rows` for an x with `l` rows: dx [n, l, ..] with dx[i, r] the sum of
/// dy[i, j] over the j with idx[i, j] = r, in increasing j (the same bits on every backend),
/// zero where no index points.
pub fn gather_rows_bwd<B: Backend>(dy: &Tensor<B>, idx: &Tensor<B>, l: usize) -> Result<Tensor<B>> {
    same_dtype("gather_rows_bwd", &[dy, idx])?;
    let d = gather_dims("gather_rows_bwd", dy.shape(), l, idx.shape())?;
    if dy.shape()[1] != d.k {
        return Err(shape_err("gather_rows_bwd", "dy [n, k, ..] must have the indices' k", &[dy.shape(), idx.shape()]));
    }
    let mut shape = dy.shape().to_vec();
    shape[1] = l;
    let dx = out(dy, &shape)?;
    if dx.numel() > 0 {
        dy.backend().gather_rows_bwd(dy.storage(), idx.storage(), dx.storage(), &d)?;
    }
    Ok(dx)
}
