//! Cross-entropy and the negative-cosine loss (shaders/loss.wgsl). Losses are written to
//! one-element device buffers and backward reads dloss on the device: no host round trip.

use super::context::{Context, Params, grid, kernel, r, w};
use super::{WgpuBackend, WgpuStorage};
use crate::error::Result;

const FAMILY: &str = "loss";

fn params(rows: usize, cols: usize, eps: f32, want_dz: bool) -> Params {
    Params::new().u(rows).u(cols).f(eps).b(want_dz)
}

/// An invalid label gives a NaN loss (the CPU backend returns an error instead).
pub fn cross_entropy_fwd(
    ctx: &Context,
    logits: &WgpuStorage,
    labels: &WgpuStorage,
    out: &WgpuStorage,
    rows: usize,
    classes: usize,
) -> Result<()> {
    let k = kernel("cross_entropy", FAMILY, "cross_entropy_fwd_f32");
    ctx.launch(k, params(rows, classes, 0.0, false), &[r(1, logits.buf()), r(2, labels.buf()), w(5, out.buf())], [1, 1, 1])
}

pub fn cross_entropy_bwd(
    ctx: &Context,
    logits: &WgpuStorage,
    labels: &WgpuStorage,
    dloss: &WgpuStorage,
    dlogits: &WgpuStorage,
    rows: usize,
    classes: usize,
) -> Result<()> {
    let k = kernel("cross_entropy_bwd", FAMILY, "cross_entropy_bwd_f32");
    let binds = [r(1, logits.buf()), r(2, labels.buf()), r(3, dloss.buf()), w(5, dlogits.buf())];
    ctx.launch(k, params(rows, classes, 0.0, false), &binds, ctx.grid1(rows))
}

pub fn cosine_loss_fwd(
    be: &WgpuBackend,
    p: &WgpuStorage,
    z: &WgpuStorage,
    out: &WgpuStorage,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let ctx = &*be.ctx;
    let cos = be.storage(rows)?;
    let k = kernel("cosine_loss", FAMILY, "cosine_rows_f32");
    ctx.launch(k, params(rows, dim, eps, false), &[r(1, p.buf()), r(2, z.buf()), w(5, cos.buf())], grid(rows, 1))?;
    let k = kernel("cosine_loss", FAMILY, "cosine_mean_f32");
    ctx.launch(k, params(rows, dim, eps, false), &[r(4, cos.buf()), w(5, out.buf())], [1, 1, 1])
}

#[allow(clippy::too_many_arguments)]
pub fn cosine_loss_bwd(
    ctx: &Context,
    p: &WgpuStorage,
    z: &WgpuStorage,
    dloss: &WgpuStorage,
    dp: &WgpuStorage,
    dz: Option<&WgpuStorage>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let k = kernel("cosine_loss_bwd", FAMILY, "cosine_loss_bwd_f32");
    let dz_buf = dz.map_or(&ctx.dummy, |s| s.buf());
    let binds = [r(1, p.buf()), r(2, z.buf()), r(3, dloss.buf()), w(5, dp.buf()), w(6, dz_buf)];
    ctx.launch(k, params(rows, dim, eps, dz.is_some()), &binds, grid(rows, 1))
}
