//! Permute, slice, slice-assign, the per-row gather and its scatter back (shaders/layout.wgsl).

use super::WgpuBackend;
use super::WgpuStorage;
use super::context::{Context, Kernel, Params, kernel, r, w};
use crate::backend::ops::*;
use crate::backend::{GatherDims, SliceDims};
use crate::error::{Error, Result};

const FAMILY: &str = "layout";
const MAX_RANK: usize = 8;

fn slice_params(n: usize, d: &SliceDims) -> Params {
    Params::new().u(n).u(0).u(d.outer).u(d.axis).u(d.start).u(d.len).u(d.inner).u(0)
}

/// gather_rows_fwd_f32 (src x, dst y) or gather_rows_bwd_f32 (src dy, dst dx) over `n` elements
/// of dst: x [outer = n, axis = l, inner = d], len = k.
fn gather(ctx: &Context, k: Kernel, src: &WgpuStorage, idx: &WgpuStorage, dst: &WgpuStorage, n: usize, d: &GatherDims) -> Result<()> {
    // Offsets into x (or dy) run to n * max(l, k) * d, in u32.
    let reach = d.n * d.l.max(d.k) * d.d;
    if u32::try_from(reach).is_err() {
        return Err(Error::Invalid { op: k.op, msg: format!("{reach} elements are past the wgpu kernels' 32-bit indexing") });
    }
    let p = Params::new().u(n).u(0).u(d.n).u(d.l).u(0).u(d.k).u(d.d).u(0);
    ctx.launch(k, p, &[r(1, src.buf()), w(2, dst.buf()), r(3, idx.buf())], ctx.grid1(n))
}

impl LayoutOps for WgpuBackend {
    fn permute(&self, x: &WgpuStorage, y: &WgpuStorage, shape: &[usize], perm: &[usize]) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let rank = shape.len();
        if rank > MAX_RANK {
            return Err(Error::Invalid { op: "permute", msg: format!("rank {rank} > {MAX_RANK} is not supported by the wgpu backend") });
        }
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * shape[i + 1];
        }
        let n: usize = shape.iter().product();
        let mut p = Params::new().u(n).u(rank).u(0).u(0).u(0).u(0).u(0).u(0);
        for i in 0..MAX_RANK {
            p = p.u(if i < rank { shape[perm[i]] } else { 1 });
        }
        for i in 0..MAX_RANK {
            p = p.u(if i < rank { in_strides[perm[i]] } else { 0 });
        }
        ctx.launch(kernel("permute", FAMILY, "permute_fwd_f32"), p, &[r(1, x.buf()), w(2, y.buf())], ctx.grid1(n))
    }

    fn slice(&self, x: &WgpuStorage, y: &WgpuStorage, d: &SliceDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let n = d.outer * d.len * d.inner;
        ctx.launch(kernel("slice", FAMILY, "slice_fwd_f32"), slice_params(n, d), &[r(1, x.buf()), w(2, y.buf())], ctx.grid1(n))
    }

    fn slice_assign(&self, src: &WgpuStorage, dst: &WgpuStorage, d: &SliceDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let n = d.outer * d.len * d.inner;
        let k = kernel("slice_assign", FAMILY, "slice_assign_fwd_f32");
        ctx.launch(k, slice_params(n, d), &[r(1, src.buf()), w(2, dst.buf())], ctx.grid1(n))
    }

    fn gather_rows(&self, x: &WgpuStorage, idx: &WgpuStorage, y: &WgpuStorage, d: &GatherDims) -> Result<()> {
        let k = kernel("gather_rows", FAMILY, "gather_rows_fwd_f32");
        gather(&self.ctx, k, x, idx, y, d.n * d.k * d.d, d)
    }

    fn gather_rows_bwd(&self, dy: &WgpuStorage, idx: &WgpuStorage, dx: &WgpuStorage, d: &GatherDims) -> Result<()> {
        let k = kernel("gather_rows_bwd", FAMILY, "gather_rows_bwd_f32");
        gather(&self.ctx, k, dy, idx, dx, d.n * d.l * d.d, d)
    }
}
