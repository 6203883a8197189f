//! Layout: permutes, slices and per-row gathers, written contiguously.

use super::CoreOps;
use crate::error::Result;

/// The range [start, start + len) of the middle axis of [outer, axis, inner].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceDims {
    pub outer: usize,
    pub axis: usize,
    pub start: usize,
    pub len: usize,
    pub inner: usize,
}

/// A per-row gather of x [n, l, d]: for each i, k indices into its l rows, `idx` [n, k].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatherDims {
    pub n: usize,
    pub l: usize,
    pub k: usize,
    pub d: usize,
}

pub trait LayoutOps: CoreOps {
    /// y = x.permute(perm), written contiguously. `shape` is x's shape.
    fn permute(&self, x: &Self::Storage, y: &Self::Storage, shape: &[usize], perm: &[usize]) -> Result<()>;
    /// y [outer, len, inner] = x [outer, start..start+len, inner]
    fn slice(&self, x: &Self::Storage, y: &Self::Storage, d: &SliceDims) -> Result<()>;
    /// dst [outer, start..start+len, inner] = src [outer, len, inner]; the rest of dst is kept.
    fn slice_assign(&self, src: &Self::Storage, dst: &Self::Storage, d: &SliceDims) -> Result<()>;
    /// y [n, k, d] with y[i, j, :] = x[i, idx[i, j], :]; `idx` [n, k] holds row indices in 0..l
    /// stored as floats (as cross_entropy's labels). One that is not an integer in 0..l is an
    /// error on the CPU and gives NaN rows on the GPUs (a kernel cannot return an error).
    fn gather_rows(&self, x: &Self::Storage, idx: &Self::Storage, y: &Self::Storage, d: &GatherDims) -> Result<()>;
    /// The scatter back: dx [n, l, d] with dx[i, r, :] = the sum of dy[i, j, :] over the j with
    /// idx[i, j] = r, in increasing j from 0.0 (the same bits on every backend; duplicates
    /// accumulate), zero where no j points. Every element of dx is written.
    fn gather_rows_bwd(&self, dy: &Self::Storage, idx: &Self::Storage, dx: &Self::Storage, d: &GatherDims) -> Result<()>;
}
