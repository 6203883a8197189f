//! Elementwise maps, fill/copy and the fixed-order axis sum (shaders/elementwise.wgsl).

use super::context::{Context, Params, kernel, r, w};
use super::{WgpuBackend, WgpuStorage};
use crate::backend::ops::*;
use crate::backend::{AxisDims, Binary, Unary};
use crate::error::Result;

const FAMILY: &str = "elementwise";

/// The leading fields of elementwise.wgsl's `P`: n, b_len, op, alpha.
fn params(n: usize, b_len: usize, op: u32, alpha: f32) -> Params {
    Params::new().u(n).u(b_len).u(op as usize).f(alpha)
}

pub fn fill(ctx: &Context, s: &WgpuStorage, value: f32) -> Result<()> {
    fill_buf(ctx, s.buf(), s.len(), value)
}

pub(crate) fn fill_buf(ctx: &Context, b: &wgpu::Buffer, n: usize, value: f32) -> Result<()> {
    ctx.launch(kernel("fill", FAMILY, "fill_fwd_f32"), params(n, 0, 0, value), &[w(3, b)], ctx.grid1(n))
}

pub fn copy(ctx: &Context, src: &WgpuStorage, dst: &WgpuStorage) -> Result<()> {
    let n = dst.len().min(src.len());
    ctx.launch(kernel("copy", FAMILY, "copy_fwd_f32"), params(n, 0, 0, 0.0), &[r(1, src.buf()), w(3, dst.buf())], ctx.grid1(n))
}

fn unary_code(op: Unary) -> u32 {
    match op {
        Unary::Relu => 0,
        Unary::Gelu => 1,
        Unary::Exp => 2,
        Unary::Log => 3,
        Unary::Sqrt => 4,
        Unary::Sigmoid => 5,
        Unary::Silu => 6,
        Unary::RoundBf16 => 7,
    }
}

pub fn unary_bwd(ctx: &Context, op: Unary, x: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, n: usize) -> Result<()> {
    let k = kernel("unary_bwd", FAMILY, "unary_bwd_f32");
    ctx.launch(k, params(n, 0, unary_code(op), 0.0), &[r(1, x.buf()), r(2, dy.buf()), w(3, dx.buf())], ctx.grid1(n))
}

/// Enough independent sums to occupy a GPU; below this a long axis is split in two stages.
const TARGET_THREADS: usize = 16384;

/// y[o, i] = sum_a x[o, a, i]. One sequential sum per output when there are many outputs;
/// otherwise each output's axis is cut into fixed ranges summed in order, then the partial
/// sums are added in order (so the result never depends on scheduling).
pub(crate) fn sum_axis(be: &WgpuBackend, x: &wgpu::Buffer, y: &wgpu::Buffer, d: &AxisDims) -> Result<()> {
    let ctx = &*be.ctx;
    let outs = d.outer * d.inner;
    if outs == 0 {
        return Ok(());
    }
    let nsplit = if outs >= TARGET_THREADS || d.axis < 64 { 1 } else { TARGET_THREADS.div_ceil(outs).min(d.axis / 32).max(1) };
    let chunk = d.axis.div_ceil(nsplit).max(1);
    let k = kernel("sum_axis", FAMILY, "sum_axis_fwd_f32");
    let p = |axis: usize, nsplit: usize, chunk: usize| params(0, 0, 0, 0.0).u(d.outer).u(axis).u(d.inner).u(nsplit).u(chunk);
    if nsplit == 1 {
        return ctx.launch(k, p(d.axis, 1, d.axis), &[r(1, x), w(3, y)], ctx.grid1(outs));
    }
    let part = be.storage(d.outer * nsplit * d.inner)?;
    ctx.launch(k, p(d.axis, nsplit, chunk), &[r(1, x), w(3, part.buf())], ctx.grid1(outs * nsplit))?;
    ctx.launch(k, p(nsplit, 1, nsplit), &[r(1, part.buf()), w(3, y)], ctx.grid1(outs))
}

impl ElementwiseOps for WgpuBackend {
    fn unary_fwd(&self, op: Unary, x: &WgpuStorage, y: &WgpuStorage, n: usize) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("unary", FAMILY, "unary_fwd_f32");
        ctx.launch(k, params(n, 0, unary_code(op), 0.0), &[r(1, x.buf()), w(3, y.buf())], ctx.grid1(n))
    }

    fn unary_bwd(&self, op: Unary, x: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, n: usize) -> Result<()> {
        unary_bwd(&self.ctx, op, x, dy, dx, n)
    }

    fn binary(&self, op: Binary, a: &WgpuStorage, b: &WgpuStorage, out: &WgpuStorage, n: usize, b_len: usize) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let code = match op {
            Binary::Add => 0,
            Binary::Mul => 1,
            Binary::Sub => 2,
            Binary::Div => 3,
        };
        let k = kernel("binary", FAMILY, "binary_fwd_f32");
        ctx.launch(k, params(n, b_len.max(1), code, 0.0), &[r(1, a.buf()), r(2, b.buf()), w(3, out.buf())], ctx.grid1(n))
    }

    fn scale(&self, x: &WgpuStorage, y: &WgpuStorage, alpha: f32, n: usize) -> Result<()> {
        let ctx: &Context = &self.ctx;
        ctx.launch(kernel("scale", FAMILY, "scale_fwd_f32"), params(n, 0, 0, alpha), &[r(1, x.buf()), w(3, y.buf())], ctx.grid1(n))
    }

    /// y[o, a, i] = x[o, a, i] s[o, i]; b_len carries axis * inner.
    fn channel_scale(&self, x: &WgpuStorage, s: &WgpuStorage, y: &WgpuStorage, d: &AxisDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let n = d.outer * d.axis * d.inner;
        let k = kernel("channel_scale", FAMILY, "channel_scale_fwd_f32");
        let p = params(n, d.axis * d.inner, 0, 0.0).u(d.outer).u(d.axis).u(d.inner);
        ctx.launch(k, p, &[r(1, x.buf()), r(2, s.buf()), w(3, y.buf())], ctx.grid1(n))
    }

    fn sum_axis(&self, x: &WgpuStorage, y: &WgpuStorage, d: &AxisDims) -> Result<()> {
        sum_axis(self, x.buf(), y.buf(), d)
    }
}
