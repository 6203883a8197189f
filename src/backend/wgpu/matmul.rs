//! Batched matmul with transposed operands (shaders/matmul.wgsl + the GEMM core in gemm.wgsl).

use super::WgpuBackend;
use super::WgpuStorage;
use super::context::{Context, Params, kernel, r, sat, w};
use crate::backend::MatmulDims;
use crate::backend::ops::*;
use crate::error::Result;

impl MatmulOps for WgpuBackend {
    fn matmul(&self, a: &WgpuStorage, b: &WgpuStorage, c: &WgpuStorage, d: &MatmulDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let t = &ctx.tiles;
        let p = Params::new().u(d.m).u(d.n).u(d.k).u(d.batch).b(d.trans_a).b(d.trans_b);
        let zmax = ctx.limits.max_compute_workgroups_per_dimension as usize;
        let groups = [sat(d.n.div_ceil(t.mm_bn() as usize)), sat(d.m.div_ceil(t.mm_bm() as usize)), sat(d.batch.min(zmax))];
        ctx.launch(kernel("matmul", "matmul", "matmul_fwd_f32"), p, &[r(1, a.buf()), r(2, b.buf()), w(3, c.buf())], groups)
    }
}
