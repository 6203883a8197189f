//! NHWC 2-D convolution: the forward pass, the data and weight gradients, and the convolution
//! fused with a training batch norm.

use super::CoreOps;
use super::norm::{BnTrain, NormDims, NormOps};
use crate::dtype::DType;
use crate::error::Result;

/// NHWC convolution: x [n, h, w, c_in], weight [c_out, kh, kw, c_in / groups], y [n, oh, ow, c_out].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

pub trait ConvOps: CoreOps + NormOps {
    fn conv2d_fwd(&self, x: &Self::Storage, w: &Self::Storage, y: &Self::Storage, d: &Conv2dDims) -> Result<()>;
    fn conv2d_data_bwd(&self, dy: &Self::Storage, w: &Self::Storage, dx: &Self::Storage, d: &Conv2dDims) -> Result<()>;
    fn conv2d_weight_bwd(&self, x: &Self::Storage, dy: &Self::Storage, dw: &Self::Storage, d: &Conv2dDims) -> Result<()>;
    /// dx = conv2d_data_bwd(dy, w) + prev, where the backend can add `prev` as it stores dx (CUDA:
    /// in the GEMM's epilogue); returns false, having done nothing, where it cannot (this
    /// default: the CPU and WGSL), and ops::conv2d_data_bwd_add then adds in a pass of its own.
    fn conv2d_data_bwd_add(&self, dy: &Self::Storage, w: &Self::Storage, prev: &Self::Storage, dx: &Self::Storage, d: &Conv2dDims) -> Result<bool> {
        let _ = (dy, w, prev, dx, d);
        Ok(false)
    }

    /// A convolution whose output goes straight into training batch norm (a ResNet's conv + BN):
    /// `conv_out` = conv2d(x, w) (kept: batch norm's backward reads it), then
    /// batchnorm_fwd_train of it. A backend may fuse the two (CUDA sums the statistics in the
    /// convolution's epilogue instead of reading its output again); this default runs them one
    /// after the other.
    fn conv2d_batchnorm_fwd_train(
        &self, x: &Self::Storage, w: &Self::Storage, conv_out: &Self::Storage, cd: &Conv2dDims, bn: BnTrain<'_, Self::Storage>,
        nd: &NormDims,
    ) -> Result<()> {
        self.conv2d_fwd(x, w, conv_out, cd)?;
        self.batchnorm_fwd_train(conv_out, bn, nd)
    }

    /// The dtype `conv2d_batchnorm_fwd_train` takes its `conv_out` in (from F32 inputs), which only
    /// batch norm reads: its forward pass here, and `batchnorm_bwd` as x. F32 by default. CUDA
    /// at precision bf16 takes BF16: the kernel rounds the output to bf16 anyway, so the half-size
    /// storage holds the same values, and every pass over it (the write, the normalising read,
    /// both backward reads) moves half the bytes.
    fn conv2d_batchnorm_out_dtype(&self) -> DType {
        DType::F32
    }
}
