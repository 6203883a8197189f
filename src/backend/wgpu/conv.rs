//! NHWC convolution as implicit GEMM (shaders/conv.wgsl + gemm.wgsl): forward, backward-data
//! (a gather over output pixels, so dx needs no zeroing) and backward-weight (split over output
//! pixels, partial results summed in a fixed order by the axis-sum kernel).

use super::context::{Context, Params, kernel, r, sat, w};
use super::{WgpuBackend, WgpuStorage, elementwise};
use crate::backend::ops::*;
use crate::backend::{AxisDims, Conv2dDims};
use crate::error::Result;

/// conv.wgsl's `P` up to `og`, followed by the GEMM's (rows, columns, depth) and the split.
fn params(d: &Conv2dDims, gm: usize, gn: usize, gk: usize, nsplit: usize, chunk: usize) -> Params {
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    Params::new()
        .u(d.n)
        .u(d.h)
        .u(d.w)
        .u(d.c_in)
        .u(d.c_out)
        .u(d.kh)
        .u(d.kw)
        .u(d.stride[0])
        .u(d.stride[1])
        .u(d.pad[0])
        .u(d.pad[1])
        .u(d.groups)
        .u(d.oh)
        .u(d.ow)
        .u(cg)
        .u(og)
        .u(gm)
        .u(gn)
        .u(gk)
        .u(nsplit)
        .u(chunk)
}

fn tiles(ctx: &Context, rows: usize, cols: usize, z: usize) -> [u32; 3] {
    let t = &ctx.tiles;
    [sat(cols.div_ceil(t.mm_bn() as usize)), sat(rows.div_ceil(t.mm_bm() as usize)), sat(z)]
}

pub fn fwd(ctx: &Context, x: &WgpuStorage, wt: &WgpuStorage, y: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    let (m, k) = (d.n * d.oh * d.ow, d.kh * d.kw * cg);
    let binds = [r(1, x.buf()), r(2, wt.buf()), r(3, &ctx.dummy), w(4, y.buf())];
    ctx.launch(kernel("conv2d", "conv", "conv2d_fwd_f32"), params(d, m, og, k, 1, 0), &binds, tiles(ctx, m, og, d.groups))
}

/// One GEMM per stride phase (z = group * stride^2 + phase), each over its own input pixels
/// and kernel taps; the grid covers the largest phase.
pub fn bwd_data(ctx: &Context, dy: &WgpuStorage, wt: &WgpuStorage, dx: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
    let cg = d.c_in / d.groups;
    let phases = d.stride[0] * d.stride[1];
    let m = d.n * d.h.div_ceil(d.stride[0]) * d.w.div_ceil(d.stride[1]);
    let binds = [r(1, &ctx.dummy), r(2, wt.buf()), r(3, dy.buf()), w(4, dx.buf())];
    let kern = kernel("conv2d_data_bwd", "conv", "conv2d_data_bwd_f32");
    ctx.launch(kern, params(d, m, cg, 0, 1, 0), &binds, tiles(ctx, m, cg, d.groups * phases))
}

/// Workgroups the backward-weight GEMM aims for; the reduction over output pixels is split
/// until the output tiles times the splits reach it.
const TARGET_GROUPS: usize = 128;

pub fn bwd_weight(be: &WgpuBackend, ctx: &Context, x: &WgpuStorage, dy: &WgpuStorage, dw: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    let kdim = d.kh * d.kw * cg;
    let rows = d.n * d.oh * d.ow;
    let bk = ctx.tiles.mm_bk as usize;
    let out_tiles = tiles(ctx, og, kdim, d.groups);
    let tiles_n = out_tiles[0] as usize * out_tiles[1] as usize * d.groups;
    let zmax = ctx.limits.max_compute_workgroups_per_dimension as usize / d.groups.max(1);
    let nsplit = TARGET_GROUPS.div_ceil(tiles_n.max(1)).min(rows.div_ceil(4 * bk)).min(zmax).max(1);
    let chunk = rows.div_ceil(nsplit).div_ceil(bk) * bk;
    let nsplit = rows.div_ceil(chunk.max(1)).max(1);
    let kern = kernel("conv2d_weight_bwd", "conv", "conv2d_weight_bwd_f32");
    let groups = [out_tiles[0], out_tiles[1], sat(nsplit * d.groups)];
    let p = params(d, og, kdim, kdim, nsplit, chunk.max(1));
    if nsplit == 1 {
        return ctx.launch(kern, p, &[r(1, x.buf()), r(2, &ctx.dummy), r(3, dy.buf()), w(4, dw.buf())], groups);
    }
    let part = be.storage(nsplit * d.c_out * kdim)?;
    ctx.launch(kern, p, &[r(1, x.buf()), r(2, &ctx.dummy), r(3, dy.buf()), w(4, part.buf())], groups)?;
    elementwise::sum_axis(be, part.buf(), dw.buf(), &AxisDims { outer: 1, axis: nsplit, inner: d.c_out * kdim })
}

impl ConvOps for WgpuBackend {
    fn conv2d_fwd(&self, x: &WgpuStorage, w: &WgpuStorage, y: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
        fwd(&self.ctx, x, w, y, d)
    }

    fn conv2d_data_bwd(&self, dy: &WgpuStorage, w: &WgpuStorage, dx: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
        bwd_data(&self.ctx, dy, w, dx, d)
    }

    fn conv2d_weight_bwd(&self, x: &WgpuStorage, dy: &WgpuStorage, dw: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
        bwd_weight(self, &self.ctx, x, dy, dw, d)
    }
}
