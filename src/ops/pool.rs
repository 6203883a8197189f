//! Max pooling and global average pooling (NHWC).

use crate::backend::*;
use crate::error::{Result, shape_err};
use crate::tensor::Tensor;

use super::{expect_shape, out, same_dtype};

pub fn pool_dims(x: &[usize], k: usize, stride: usize, pad: usize) -> Result<PoolDims> {
    if x.len() != 4 || k == 0 || stride == 0 || pad * 2 > k || x[1] + 2 * pad < k || x[2] + 2 * pad < k {
        return Err(shape_err(
            "maxpool2d",
            format!("needs [n, h, w, c], kernel {k} stride {stride} pad {pad} (pad at most half the kernel)"),
            &[x],
        ));
    }
    let oh = (x[1] + 2 * pad - k) / stride + 1;
    let ow = (x[2] + 2 * pad - k) / stride + 1;
    Ok(PoolDims { n: x[0], h: x[1], w: x[2], c: x[3], k, stride, pad, oh, ow })
}

pub fn maxpool2d<B: Backend>(x: &Tensor<B>, d: &PoolDims) -> Result<Tensor<B>> {
    same_dtype("maxpool2d", &[x])?;
    expect_shape("maxpool2d", "input", x, &[d.n, d.h, d.w, d.c])?;
    let y = out(x, &[d.n, d.oh, d.ow, d.c])?;
    x.backend().maxpool2d_fwd(x.storage(), y.storage(), d)?;
    Ok(y)
}

pub fn maxpool2d_bwd<B: Backend>(x: &Tensor<B>, dy: &Tensor<B>, d: &PoolDims) -> Result<Tensor<B>> {
    same_dtype("maxpool2d_bwd", &[x, dy])?;
    expect_shape("maxpool2d_bwd", "dy", dy, &[d.n, d.oh, d.ow, d.c])?;
    let dx = out(x, x.shape())?;
    x.backend().maxpool2d_bwd(x.storage(), dy.storage(), dx.storage(), d)?;
    Ok(dx)
}

/// [n, h, w, c] -> [n, c]
pub fn avgpool_global<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("avgpool_global", &[x])?;
    let s = x.shape();
    if s.len() != 4 || s[1] * s[2] == 0 {
        return Err(shape_err("avgpool_global", "needs a non-empty [n, h, w, c]", &[s]));
    }
    let d = AxisDims { outer: s[0], axis: s[1] * s[2], inner: s[3] };
    let y = out(x, &[s[0], s[3]])?;
    x.backend().avgpool_global_fwd(x.storage(), y.storage(), &d)?;
    Ok(y)
}

pub fn avgpool_global_bwd<B: Backend>(dy: &Tensor<B>, x_shape: &[usize]) -> Result<Tensor<B>> {
    same_dtype("avgpool_global_bwd", &[dy])?;
    expect_shape("avgpool_global_bwd", "dy", dy, &[x_shape[0], x_shape[3]])?;
    let d = AxisDims { outer: x_shape[0], axis: x_shape[1] * x_shape[2], inner: x_shape[3] };
    let dx = out(dy, x_shape)?;
    dy.backend().avgpool_global_bwd(dy.storage(), dx.storage(), &d)?;
    Ok(dx)
}
