//! Layout: permutes and slices, written contiguously.

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

pub trait LayoutOps: CoreOps {
    /// y = x.permute(perm), written contiguously. `shape` is x's shape.
    fn permute(&self, x: &Self::Storage, y: &Self::Storage, shape: &[usize], perm: &[usize]) -> Result<()>;
    /// y [outer, len, inner] = x [outer, start..start+len, inner]
    fn slice(&self, x: &Self::Storage, y: &Self::Storage, d: &SliceDims) -> Result<()>;
    /// dst [outer, start..start+len, inner] = src [outer, len, inner]; the rest of dst is kept.
    fn slice_assign(&self, src: &Self::Storage, dst: &Self::Storage, d: &SliceDims) -> Result<()>;
}
