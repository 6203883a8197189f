//! Permute, slice and slice-assign (shaders/layout.wgsl).

use super::WgpuBackend;
use super::WgpuStorage;
use super::context::{Context, Params, kernel, r, w};
use crate::backend::SliceDims;
use crate::backend::ops::*;
use crate::error::{Error, Result};

const FAMILY: &str = "layout";
const MAX_RANK: usize = 8;

fn slice_params(n: usize, d: &SliceDims) -> Params {
    Params::new().u(n).u(0).u(d.outer).u(d.axis).u(d.start).u(d.len).u(d.inner).u(0)
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
}
