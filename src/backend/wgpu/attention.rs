//! Flash-style attention (shaders/attention.wgsl): forward with online softmax saving the row
//! log-sum-exp; backward as three kernels (rowsum(dout * o); dq per query row; dk and dv per
//! key row), each output written by one invocation, so no atomics and a fixed order.

use super::context::{Context, Kernel, Params, r, sat, w};
use super::{WgpuBackend, WgpuStorage};
use crate::backend::AttnDims;
use crate::backend::ops::*;
use crate::error::{Error, Result};

/// Head dimensions with a compiled variant (registers per invocation scale with it).
const HEAD_DIMS: [u32; 3] = [16, 64, 128];

fn kernel(op: &'static str, entry: &'static str, d: usize) -> Result<Kernel> {
    let variant = HEAD_DIMS
        .into_iter()
        .find(|&m| d <= m as usize)
        .ok_or_else(|| Error::Invalid { op, msg: format!("head dimension {d} > {} is not supported by the wgpu backend", HEAD_DIMS[2]) })?;
    Ok(Kernel { op, family: "attention", entry, variant })
}

fn params(d: &AttnDims) -> Params {
    Params::new().u(d.bh).u(d.tq).u(d.tk).u(d.d).f(d.scale)
}

fn rows_grid(ctx: &Context, rows: usize, bh: usize) -> [u32; 3] {
    let ymax = ctx.limits.max_compute_workgroups_per_dimension as usize;
    [sat(rows.div_ceil(ctx.tiles.att_bq as usize)), sat(bh.min(ymax)), 1]
}

pub fn fwd(
    ctx: &Context, q: &WgpuStorage, k: &WgpuStorage, v: &WgpuStorage, o: &WgpuStorage, lse: &WgpuStorage, d: &AttnDims,
) -> Result<()> {
    let kern = kernel("attention", "attention_fwd_f32", d.d)?;
    let binds = [r(1, q.buf()), r(2, k.buf()), r(3, v.buf()), w(8, o.buf()), w(9, lse.buf())];
    ctx.launch(kern, params(d), &binds, rows_grid(ctx, d.tq, d.bh))
}

#[allow(clippy::too_many_arguments)]
pub fn bwd(
    be: &WgpuBackend, q: &WgpuStorage, k: &WgpuStorage, v: &WgpuStorage, o: &WgpuStorage, lse: &WgpuStorage, dout: &WgpuStorage,
    dq: &WgpuStorage, dk: &WgpuStorage, dv: &WgpuStorage, d: &AttnDims,
) -> Result<()> {
    let ctx = &*be.ctx;
    let dvec = be.storage(d.bh * d.tq)?;
    let kern = kernel("attention_bwd", "attention_rowdot_bwd_f32", d.d)?;
    ctx.launch(kern, params(d), &[r(4, o.buf()), r(6, dout.buf()), w(8, dvec.buf())], ctx.grid1(d.bh * d.tq))?;
    let ins = [r(1, q.buf()), r(2, k.buf()), r(3, v.buf()), r(5, lse.buf()), r(6, dout.buf()), r(7, dvec.buf())];
    let kern = kernel("attention_bwd", "attention_dq_bwd_f32", d.d)?;
    let mut binds = ins.to_vec();
    binds.push(w(8, dq.buf()));
    ctx.launch(kern, params(d), &binds, rows_grid(ctx, d.tq, d.bh))?;
    let kern = kernel("attention_bwd", "attention_dkdv_bwd_f32", d.d)?;
    let mut binds = ins.to_vec();
    binds.extend([w(8, dk.buf()), w(9, dv.buf())]);
    ctx.launch(kern, params(d), &binds, rows_grid(ctx, d.tk, d.bh))
}

impl AttentionOps for WgpuBackend {
    fn attention_fwd(
        &self, q: &WgpuStorage, k: &WgpuStorage, v: &WgpuStorage, o: &WgpuStorage, lse: &WgpuStorage, d: &AttnDims,
    ) -> Result<()> {
        fwd(&self.ctx, q, k, v, o, lse, d)
    }

    fn attention_bwd(
        &self, q: &WgpuStorage, k: &WgpuStorage, v: &WgpuStorage, o: &WgpuStorage, lse: &WgpuStorage, dout: &WgpuStorage, dq: &WgpuStorage,
        dk: &WgpuStorage, dv: &WgpuStorage, d: &AttnDims,
    ) -> Result<()> {
        bwd(self, q, k, v, o, lse, dout, dq, dk, dv, d)
    }
}
