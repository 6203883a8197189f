//! 2-D convolution (NHWC input, [c_out, kh, kw, c_in/groups] weight) and its two gradients.

use crate::backend::*;
use crate::error::{Result, shape_err};
use crate::tensor::Tensor;

use super::{expect_shape, out, same_dtype};

/// Checks an NHWC input against a [c_out, kh, kw, c_in/groups] weight and returns the dims.
pub fn conv2d_dims(x: &[usize], w: &[usize], stride: [usize; 2], pad: [usize; 2], groups: usize) -> Result<Conv2dDims> {
    const OP: &str = "conv2d";
    if x.len() != 4 || w.len() != 4 {
        return Err(shape_err(OP, "input must be [n, h, w, c] and weight [c_out, kh, kw, c_in/groups]", &[x, w]));
    }
    let (n, h, wd, c_in) = (x[0], x[1], x[2], x[3]);
    let (c_out, kh, kw, cg) = (w[0], w[1], w[2], w[3]);
    if groups == 0 || c_in % groups != 0 || c_out % groups != 0 || cg * groups != c_in {
        return Err(shape_err(OP, format!("channels do not split into {groups} groups"), &[x, w]));
    }
    if stride[0] == 0 || stride[1] == 0 || h + 2 * pad[0] < kh || wd + 2 * pad[1] < kw {
        return Err(shape_err(OP, format!("kernel larger than padded input or zero stride (stride {stride:?}, pad {pad:?})"), &[x, w]));
    }
    let oh = (h + 2 * pad[0] - kh) / stride[0] + 1;
    let ow = (wd + 2 * pad[1] - kw) / stride[1] + 1;
    Ok(Conv2dDims { n, h, w: wd, c_in, c_out, kh, kw, stride, pad, groups, oh, ow })
}

pub fn conv2d<B: Backend>(x: &Tensor<B>, w: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d", &[x, w])?;
    expect_shape("conv2d", "input", x, &[d.n, d.h, d.w, d.c_in])?;
    expect_shape("conv2d", "weight", w, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    let y = out(x, &[d.n, d.oh, d.ow, d.c_out])?;
    x.backend().conv2d_fwd(x.storage(), w.storage(), y.storage(), d)?;
    Ok(y)
}

pub fn conv2d_data_bwd<B: Backend>(dy: &Tensor<B>, w: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d_data_bwd", &[dy, w])?;
    expect_shape("conv2d_data_bwd", "dy", dy, &[d.n, d.oh, d.ow, d.c_out])?;
    expect_shape("conv2d_data_bwd", "weight", w, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    let dx = out(dy, &[d.n, d.h, d.w, d.c_in])?;
    dy.backend().conv2d_data_bwd(dy.storage(), w.storage(), dx.storage(), d)?;
    Ok(dx)
}

/// conv2d_data_bwd(dy, w) + prev (prev shaped like dx), added as dx is stored where the backend
/// can (`ConvOps::conv2d_data_bwd_add`), else in a pass of its own: the same values either way.
pub fn conv2d_data_bwd_add<B: Backend>(dy: &Tensor<B>, w: &Tensor<B>, prev: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d_data_bwd", &[dy, w, prev])?;
    expect_shape("conv2d_data_bwd", "dy", dy, &[d.n, d.oh, d.ow, d.c_out])?;
    expect_shape("conv2d_data_bwd", "weight", w, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    expect_shape("conv2d_data_bwd", "the gradient to add", prev, &[d.n, d.h, d.w, d.c_in])?;
    let dx = out(dy, &[d.n, d.h, d.w, d.c_in])?;
    if dy.backend().conv2d_data_bwd_add(dy.storage(), w.storage(), prev.storage(), dx.storage(), d)? {
        return Ok(dx);
    }
    dy.backend().conv2d_data_bwd(dy.storage(), w.storage(), dx.storage(), d)?;
    super::add(prev, &dx)
}

pub fn conv2d_weight_bwd<B: Backend>(x: &Tensor<B>, dy: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d_weight_bwd", &[x, dy])?;
    expect_shape("conv2d_weight_bwd", "input", x, &[d.n, d.h, d.w, d.c_in])?;
    expect_shape("conv2d_weight_bwd", "dy", dy, &[d.n, d.oh, d.ow, d.c_out])?;
    let dw = out(x, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    x.backend().conv2d_weight_bwd(x.storage(), dy.storage(), dw.storage(), d)?;
    Ok(dw)
}
