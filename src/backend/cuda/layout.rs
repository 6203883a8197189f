//! Launches for kernels/layout.cu: permute, slice, slice-assign, the per-row gather and its scatter.

use bytemuck::{Pod, Zeroable};

use super::{Arg, CudaBackend, CudaStorage, i64a, ptr};
use crate::backend::ops::*;
use crate::backend::{GatherDims, SliceDims};
use crate::error::{Error, Result};

/// PERMUTE_MAX_RANK of layout.cu.
const MAX_RANK: usize = 8;

/// Mirror of `struct PermuteDims` in kernels/layout.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KPermute {
    rank: i32,
    _pad: i32,
    out_shape: [i64; MAX_RANK],
    src_stride: [i64; MAX_RANK],
}

/// slice_fwd_f32 (x -> y) or slice_assign_fwd_f32 (src -> the slice of dst).
pub(super) fn slice(b: &CudaBackend, kernel: &str, src: &CudaStorage, dst: &CudaStorage, d: &SliceDims) -> Result<()> {
    let n = d.outer * d.len * d.inner;
    if n == 0 {
        return Ok(());
    }
    b.launch_over(kernel, n, &[ptr(src), ptr(dst), i64a(d.outer), i64a(d.axis), i64a(d.start), i64a(d.len), i64a(d.inner)])
}

/// gather_rows_fwd_f32 (one thread per element of y) or gather_rows_bwd_f32 (one per element of
/// dx): the same arguments, `n` elements.
fn gather(b: &CudaBackend, kernel: &str, src: &CudaStorage, idx: &CudaStorage, dst: &CudaStorage, n: usize, d: &GatherDims) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    b.launch_over(kernel, n, &[ptr(src), ptr(idx), ptr(dst), i64a(d.n), i64a(d.l), i64a(d.k), i64a(d.d)])
}

impl LayoutOps for CudaBackend {
    fn permute(&self, x: &CudaStorage, y: &CudaStorage, shape: &[usize], perm: &[usize]) -> Result<()> {
        let rank = shape.len();
        if rank > MAX_RANK {
            return Err(Error::Invalid { op: "permute", msg: format!("rank {rank} is over the cuda kernels' limit of {MAX_RANK}") });
        }
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * shape[i + 1];
        }
        let mut k = KPermute::zeroed();
        k.rank = rank as i32;
        for (a, &p) in perm.iter().enumerate() {
            k.out_shape[a] = shape[p] as i64;
            k.src_stride[a] = in_strides[p] as i64;
        }
        self.launch_over("permute_fwd_f32", n, &[ptr(x), ptr(y), i64a(n), Arg::Bytes(bytemuck::bytes_of(&k))])
    }

    fn slice(&self, x: &CudaStorage, y: &CudaStorage, d: &SliceDims) -> Result<()> {
        slice(self, "slice_fwd_f32", x, y, d)
    }

    fn slice_assign(&self, src: &CudaStorage, dst: &CudaStorage, d: &SliceDims) -> Result<()> {
        slice(self, "slice_assign_fwd_f32", src, dst, d)
    }

    fn gather_rows(&self, x: &CudaStorage, idx: &CudaStorage, y: &CudaStorage, d: &GatherDims) -> Result<()> {
        gather(self, "gather_rows_fwd_f32", x, idx, y, d.n * d.k * d.d, d)
    }

    fn gather_rows_bwd(&self, dy: &CudaStorage, idx: &CudaStorage, dx: &CudaStorage, d: &GatherDims) -> Result<()> {
        gather(self, "gather_rows_bwd_f32", dy, idx, dx, d.n * d.l * d.d, d)
    }
}
