//! Cross-entropy, the negative-cosine loss, NT-Xent and the identity penalty (shaders/loss.wgsl). Losses are written to
//! one-element device buffers and backward reads dloss on the device: no host round trip.

use super::context::{Context, Params, grid, kernel, r, w};
use super::{WgpuBackend, WgpuStorage};
use crate::backend::ops::*;
use crate::error::Result;

const FAMILY: &str = "loss";

fn params(rows: usize, cols: usize, eps: f32, want_dz: bool) -> Params {
    Params::new().u(rows).u(cols).f(eps).b(want_dz)
}

/// The identity penalty's two weights: eps carries the diagonal's, w2 the off-diagonal's.
fn penalty_params(d: usize, diag_weight: f32, off_weight: f32) -> Params {
    params(d, d, diag_weight, false).f(off_weight)
}

/// o1[0] = alpha * sum(part[..n]), one workgroup.
fn reduce(ctx: &Context, part: &WgpuStorage, out: &WgpuStorage, n: usize, alpha: f32) -> Result<()> {
    let k = kernel("loss_reduce", FAMILY, "loss_reduce_fwd_f32");
    ctx.launch(k, params(n, 0, alpha, false), &[r(4, part.buf()), w(5, out.buf())], [1, 1, 1])
}

impl LossOps for WgpuBackend {
    /// An invalid label gives a NaN loss (the CPU backend returns an error instead).
    fn cross_entropy_fwd(&self, logits: &WgpuStorage, labels: &WgpuStorage, out: &WgpuStorage, rows: usize, classes: usize) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("cross_entropy", FAMILY, "cross_entropy_fwd_f32");
        ctx.launch(k, params(rows, classes, 0.0, false), &[r(1, logits.buf()), r(2, labels.buf()), w(5, out.buf())], [1, 1, 1])
    }

    fn cross_entropy_bwd(
        &self, logits: &WgpuStorage, labels: &WgpuStorage, dloss: &WgpuStorage, dlogits: &WgpuStorage, rows: usize, classes: usize,
    ) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("cross_entropy_bwd", FAMILY, "cross_entropy_bwd_f32");
        let binds = [r(1, logits.buf()), r(2, labels.buf()), r(3, dloss.buf()), w(5, dlogits.buf())];
        ctx.launch(k, params(rows, classes, 0.0, false), &binds, ctx.grid1(rows))
    }

    fn soft_cross_entropy_fwd(&self, logits: &WgpuStorage, q: &WgpuStorage, out: &WgpuStorage, rows: usize, classes: usize) -> Result<()> {
        let ctx = &*self.ctx;
        let per_row = self.storage(rows)?;
        let k = kernel("soft_cross_entropy", FAMILY, "soft_cross_entropy_fwd_f32");
        let binds = [r(1, logits.buf()), r(2, q.buf()), w(5, per_row.buf())];
        ctx.launch(k, params(rows, classes, 0.0, false), &binds, grid(rows, 1))?;
        reduce(ctx, &per_row, out, rows, 1.0 / rows as f32)
    }

    fn soft_cross_entropy_bwd(
        &self, logits: &WgpuStorage, q: &WgpuStorage, dloss: &WgpuStorage, dlogits: &WgpuStorage, rows: usize, classes: usize,
    ) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("soft_cross_entropy_bwd", FAMILY, "soft_cross_entropy_bwd_f32");
        let binds = [r(1, logits.buf()), r(2, q.buf()), r(3, dloss.buf()), w(5, dlogits.buf())];
        ctx.launch(k, params(rows, classes, 0.0, false), &binds, grid(rows, 1))
    }

    /// A row without a positive gives a NaN loss (the CPU backend returns an error instead).
    fn nt_xent_fwd(&self, sim: &WgpuStorage, groups: &WgpuStorage, out: &WgpuStorage, rows: usize, temperature: f32) -> Result<()> {
        let ctx = &*self.ctx;
        let per_row = self.storage(rows)?;
        let k = kernel("nt_xent", FAMILY, "nt_xent_fwd_f32");
        let binds = [r(1, sim.buf()), r(2, groups.buf()), w(5, per_row.buf())];
        ctx.launch(k, params(rows, rows, 1.0 / temperature, false), &binds, grid(rows, 1))?;
        reduce(ctx, &per_row, out, rows, 1.0 / rows as f32)
    }

    fn nt_xent_bwd(
        &self, sim: &WgpuStorage, groups: &WgpuStorage, dloss: &WgpuStorage, dsim: &WgpuStorage, rows: usize, temperature: f32,
    ) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("nt_xent_bwd", FAMILY, "nt_xent_bwd_f32");
        let binds = [r(1, sim.buf()), r(2, groups.buf()), r(3, dloss.buf()), w(5, dsim.buf())];
        ctx.launch(k, params(rows, rows, 1.0 / temperature, false), &binds, grid(rows, 1))
    }

    fn identity_penalty_fwd(&self, c: &WgpuStorage, out: &WgpuStorage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()> {
        let ctx = &*self.ctx;
        let per_row = self.storage(d)?;
        let k = kernel("identity_penalty", FAMILY, "identity_penalty_fwd_f32");
        ctx.launch(k, penalty_params(d, diag_weight, off_weight), &[r(1, c.buf()), w(5, per_row.buf())], grid(d, 1))?;
        reduce(ctx, &per_row, out, d, 1.0)
    }

    fn identity_penalty_bwd(
        &self, c: &WgpuStorage, dloss: &WgpuStorage, dc: &WgpuStorage, d: usize, diag_weight: f32, off_weight: f32,
    ) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("identity_penalty_bwd", FAMILY, "identity_penalty_bwd_f32");
        let binds = [r(1, c.buf()), r(3, dloss.buf()), w(5, dc.buf())];
        ctx.launch(k, penalty_params(d, diag_weight, off_weight), &binds, ctx.grid1(d * d))
    }

    fn cosine_loss_fwd(&self, p: &WgpuStorage, z: &WgpuStorage, out: &WgpuStorage, rows: usize, dim: usize, eps: f32) -> Result<()> {
        let ctx = &*self.ctx;
        let cos = self.storage(rows)?;
        let k = kernel("cosine_loss", FAMILY, "cosine_loss_rows_fwd_f32");
        ctx.launch(k, params(rows, dim, eps, false), &[r(1, p.buf()), r(2, z.buf()), w(5, cos.buf())], grid(rows, 1))?;
        reduce(ctx, &cos, out, rows, -1.0 / rows as f32)
    }

    #[allow(clippy::too_many_arguments)]
    fn cosine_loss_bwd(
        &self, p: &WgpuStorage, z: &WgpuStorage, dloss: &WgpuStorage, dp: &WgpuStorage, dz: Option<&WgpuStorage>, rows: usize, dim: usize,
        eps: f32,
    ) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("cosine_loss_bwd", FAMILY, "cosine_loss_bwd_f32");
        let dz_buf = dz.map_or(&ctx.dummy, |s| s.buf());
        let binds = [r(1, p.buf()), r(2, z.buf()), r(3, dloss.buf()), w(5, dp.buf()), w(6, dz_buf)];
        ctx.launch(k, params(rows, dim, eps, dz.is_some()), &binds, grid(rows, 1))
    }
}
