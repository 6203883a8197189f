//! Max-pool and global average pool (shaders/pool.wgsl). Max-pool backward is a gather over
//! the windows containing each input pixel, in the CPU's order; no zeroing, no atomics.

use super::WgpuBackend;
use super::WgpuStorage;
use super::context::{Context, Params, kernel, r, w};
use crate::backend::ops::*;
use crate::backend::{AxisDims, PoolDims};
use crate::error::Result;

const FAMILY: &str = "pool";

fn max_params(d: &PoolDims) -> Params {
    Params::new().u(d.n).u(d.h).u(d.w).u(d.c).u(d.k).u(d.stride).u(d.pad).u(d.oh).u(d.ow)
}

fn avg_params(d: &AxisDims) -> Params {
    Params::new().u(d.outer).u(0).u(0).u(0).u(0).u(0).u(0).u(0).u(0).u(d.axis).u(d.inner).f((1.0 / d.axis.max(1) as f64) as f32)
}

impl PoolOps for WgpuBackend {
    fn maxpool2d_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, d: &PoolDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("maxpool2d", FAMILY, "maxpool2d_fwd_f32");
        ctx.launch(k, max_params(d), &[r(1, x.buf()), w(3, y.buf())], ctx.grid1(d.n * d.oh * d.ow * d.c))
    }

    fn maxpool2d_bwd(&self, x: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, d: &PoolDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("maxpool2d_bwd", FAMILY, "maxpool2d_bwd_f32");
        ctx.launch(k, max_params(d), &[r(1, x.buf()), r(2, dy.buf()), w(3, dx.buf())], ctx.grid1(d.n * d.h * d.w * d.c))
    }

    fn avgpool_global_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, d: &AxisDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("avgpool_global", FAMILY, "avgpool_global_fwd_f32");
        ctx.launch(k, avg_params(d), &[r(1, x.buf()), w(3, y.buf())], ctx.grid1(d.outer * d.inner))
    }

    fn avgpool_global_bwd(&self, dy: &WgpuStorage, dx: &WgpuStorage, d: &AxisDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("avgpool_global_bwd", FAMILY, "avgpool_global_bwd_f32");
        ctx.launch(k, avg_params(d), &[r(2, dy.buf()), w(3, dx.buf())], ctx.grid1(d.outer * d.axis * d.inner))
    }
}
