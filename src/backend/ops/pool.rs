//! Max pooling and global average pooling.

use super::CoreOps;
use super::elementwise::AxisDims;
use crate::error::Result;

/// A max-pool window over NHWC: x [n, h, w, c] -> y [n, oh, ow, c].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

pub trait PoolOps: CoreOps {
    fn maxpool2d_fwd(&self, x: &Self::Storage, y: &Self::Storage, d: &PoolDims) -> Result<()>;
    /// The gradient goes to the first maximum of each window (PyTorch's choice), found again from x.
    fn maxpool2d_bwd(&self, x: &Self::Storage, dy: &Self::Storage, dx: &Self::Storage, d: &PoolDims) -> Result<()>;
    /// x [n, hw, c] -> y [n, c]; `d.outer` = n, `d.axis` = hw, `d.inner` = c.
    fn avgpool_global_fwd(&self, x: &Self::Storage, y: &Self::Storage, d: &AxisDims) -> Result<()>;
    fn avgpool_global_bwd(&self, dy: &Self::Storage, dx: &Self::Storage, d: &AxisDims) -> Result<()>;
}
