//! Elementwise ops, broadcasting binaries, per-channel scaling and axis sums.

use crate::backend::*;
use crate::error::{Result, shape_err};
use crate::tensor::{Tensor, numel};

use super::{expect_shape, out, same_dtype};

pub fn unary<B: Backend>(op: Unary, x: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("unary", &[x])?;
    let y = out(x, x.shape())?;
    x.backend().unary_fwd(op, x.storage(), y.storage(), x.numel())?;
    Ok(y)
}

pub fn unary_bwd<B: Backend>(op: Unary, x: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("unary_bwd", &[x, dy])?;
    expect_shape("unary_bwd", "dy", dy, x.shape())?;
    let dx = out(x, x.shape())?;
    x.backend().unary_bwd(op, x.storage(), dy.storage(), dx.storage(), x.numel())?;
    Ok(dx)
}

/// a op b, where b's shape must be a suffix of a's (b repeats over a's leading axes).
pub fn binary<B: Backend>(op: Binary, a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    const OP: &str = "binary";
    same_dtype(OP, &[a, b])?;
    if b.dims() > a.dims() || a.shape()[a.dims() - b.dims()..] != *b.shape() || (b.numel() == 0 && a.numel() != 0) {
        return Err(shape_err(OP, format!("{op:?}: the second shape must be a suffix of the first"), &[a.shape(), b.shape()]));
    }
    let c = out(a, a.shape())?;
    a.backend().binary(op, a.storage(), b.storage(), c.storage(), a.numel(), b.numel())?;
    Ok(c)
}

pub fn add<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Add, a, b)
}

/// a + b for every pair (each pair's tensors of one shape and dtype), in as few launches as the
/// backend can (`ElementwiseOps::add_many`).
pub fn add_many<B: Backend>(pairs: &[(&Tensor<B>, &Tensor<B>)]) -> Result<Vec<Tensor<B>>> {
    const OP: &str = "add_many";
    let Some((first, _)) = pairs.first() else { return Ok(Vec::new()) };
    let mut outs = Vec::with_capacity(pairs.len());
    for (a, b) in pairs {
        same_dtype(OP, &[a, b])?;
        expect_shape(OP, "second", b, a.shape())?;
        outs.push(out(a, a.shape())?);
    }
    let items: Vec<AddPair<'_, B::Storage>> =
        pairs.iter().zip(&outs).map(|((a, b), o)| AddPair { a: a.storage(), b: b.storage(), out: o.storage(), len: a.numel() }).collect();
    first.backend().add_many(&items)?;
    Ok(outs)
}

pub fn mul<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Mul, a, b)
}

pub fn sub<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Sub, a, b)
}

pub fn div<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Div, a, b)
}

pub fn scale<B: Backend>(x: &Tensor<B>, alpha: f32) -> Result<Tensor<B>> {
    same_dtype("scale", &[x])?;
    let y = out(x, x.shape())?;
    x.backend().scale(x.storage(), y.storage(), alpha, x.numel())?;
    Ok(y)
}

/// Sum over one axis; the axis is removed from the shape.
/// x [n, h, w, c] scaled by s [n, c] per sample and channel (squeeze-excitation's gate).
pub fn channel_scale<B: Backend>(x: &Tensor<B>, s: &Tensor<B>) -> Result<Tensor<B>> {
    let d = channel_scale_dims("channel_scale", x, s)?;
    let y = out(x, x.shape())?;
    x.backend().channel_scale(x.storage(), s.storage(), y.storage(), &d)?;
    Ok(y)
}

/// (dx, ds) of channel_scale: dx = dy s, ds[n, c] = sum over h w of dy x.
pub fn channel_scale_bwd<B: Backend>(x: &Tensor<B>, s: &Tensor<B>, dy: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
    let d = channel_scale_dims("channel_scale_bwd", x, s)?;
    expect_shape("channel_scale_bwd", "dy", dy, x.shape())?;
    let dx = channel_scale(dy, s)?;
    let ds = sum_axis(&mul(dy, x)?.reshape(&[d.outer, d.axis, d.inner])?, 1)?;
    Ok((dx, ds))
}

fn channel_scale_dims<B: Backend>(op: &'static str, x: &Tensor<B>, s: &Tensor<B>) -> Result<AxisDims> {
    same_dtype(op, &[x, s])?;
    let xs = x.shape();
    if xs.len() < 2 || s.shape() != [xs[0], xs[xs.len() - 1]] {
        return Err(shape_err(op, "needs x [n, .., c] and s [n, c]", &[xs, s.shape()]));
    }
    Ok(AxisDims { outer: xs[0], axis: numel(&xs[1..xs.len() - 1]), inner: xs[xs.len() - 1] })
}

pub fn sum_axis<B: Backend>(x: &Tensor<B>, axis: usize) -> Result<Tensor<B>> {
    same_dtype("sum_axis", &[x])?;
    if axis >= x.dims() {
        return Err(shape_err("sum_axis", format!("axis {axis} out of range"), &[x.shape()]));
    }
    let s = x.shape();
    let d = AxisDims { outer: numel(&s[..axis]), axis: s[axis], inner: numel(&s[axis + 1..]) };
    let mut shape = s.to_vec();
    shape.remove(axis);
    let y = out(x, &shape)?;
    x.backend().sum_axis(x.storage(), y.storage(), &d)?;
    Ok(y)
}

/// Sums the leading axes away so the result has shape `suffix` (the gradient of a broadcast).
pub fn sum_to_suffix<B: Backend>(x: &Tensor<B>, suffix: &[usize]) -> Result<Tensor<B>> {
    let lead = x.dims().checked_sub(suffix.len()).filter(|&l| x.shape()[l..] == *suffix);
    let Some(lead) = lead else {
        return Err(shape_err("sum_to_suffix", "target is not a suffix", &[x.shape(), suffix]));
    };
    let flat = x.reshape(&[numel(&x.shape()[..lead]), numel(suffix)])?;
    sum_axis(&flat, 0)?.reshape(suffix)
}

/// Mean over all elements, as a one-element tensor.
pub fn mean_all<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    let s = sum_axis(&x.reshape(&[x.numel()])?, 0)?;
    scale(&s.reshape(&[1])?, 1.0 / x.numel().max(1) as f32)
}
