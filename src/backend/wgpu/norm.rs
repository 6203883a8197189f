//! Batch norm, layer norm, log-sum-exp and softmax (shaders/norm.wgsl). Column statistics are reduced in
//! two fixed-order stages (per split of rows, then over splits); batch statistics use two
//! passes (mean, then squared deviations), like the CPU reference.

use super::context::{Context, Params, grid, kernel, r, w};
use super::{WgpuBackend, WgpuStorage};
use crate::backend::ops::*;
use crate::backend::{BnTail, BnTrain, NormDims, Unary};
use crate::error::Result;

const FAMILY: &str = "norm";

/// Column sums aim for this many independent sums (splits x channels).
const TARGET_THREADS: usize = 16384;

/// norm.wgsl's `P`.
fn params(d: &NormDims, flags: u32, nsplit: usize, chunk: usize, momentum: f32) -> Params {
    let unbias = if d.rows > 1 { (d.rows as f64 / (d.rows as f64 - 1.0)) as f32 } else { 1.0 };
    Params::new().u(d.rows).u(d.channels).f(d.eps).u(flags as usize).u(nsplit).u(chunk).f(momentum).f(unbias)
}

/// (splits, rows per split) of a column reduction over `rows`.
fn split(rows: usize, ch: usize) -> (usize, usize) {
    let want = if ch >= TARGET_THREADS { 1 } else { TARGET_THREADS.div_ceil(ch).min(rows.div_ceil(16)).max(1) };
    let chunk = rows.div_ceil(want).max(1);
    (rows.div_ceil(chunk).max(1), chunk)
}

fn flags(gamma: Option<&WgpuStorage>, beta: Option<&WgpuStorage>) -> u32 {
    gamma.is_some() as u32 | (beta.is_some() as u32) << 1
}

/// norm.wgsl's flag bits 4 (residual given) and 8 (ReLU) for a fused tail.
fn tail_flags(tail: &BnTail<'_, WgpuStorage>) -> u32 {
    (tail.residual.is_some() as u32) << 2 | (tail.relu as u32) << 3
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_fwd_train(be: &WgpuBackend, x: &WgpuStorage, bn: BnTrain<'_, WgpuStorage>, d: &NormDims) -> Result<()> {
    let BnTrain { gamma, beta, tail, y, save_mean, save_invstd, running } = bn;
    let ctx = &*be.ctx;
    let c = d.channels;
    let (nsplit, chunk) = split(d.rows, c);
    let momentum = running.as_ref().map_or(0.0, |rs| rs.momentum);
    let p = || params(d, flags(gamma, beta), nsplit, chunk, momentum);
    let part = be.storage(nsplit * c)?;
    let k = |entry| kernel("batchnorm", FAMILY, entry);
    ctx.launch(k("batchnorm_colsum_fwd_f32"), p(), &[r(1, x.buf()), w(8, part.buf())], ctx.grid1(nsplit * c))?;
    ctx.launch(k("batchnorm_mean_fwd_f32"), p(), &[r(7, part.buf()), w(8, save_mean.buf())], ctx.grid1(c))?;
    ctx.launch(k("batchnorm_sqdev_fwd_f32"), p(), &[r(1, x.buf()), r(3, save_mean.buf()), w(8, part.buf())], ctx.grid1(nsplit * c))?;
    ctx.launch(k("batchnorm_invstd_fwd_f32"), p(), &[r(7, part.buf()), w(8, save_invstd.buf())], ctx.grid1(c))?;
    if let Some(rs) = running {
        let binds = [r(3, save_mean.buf()), r(7, part.buf()), w(9, rs.mean.buf()), w(10, rs.var.buf())];
        ctx.launch(k("batchnorm_running_fwd_f32"), p(), &binds, ctx.grid1(c))?;
    }
    let binds = [
        r(1, x.buf()),
        r(3, save_mean.buf()),
        r(4, save_invstd.buf()),
        r(5, gamma.map_or(&ctx.dummy, |g| g.buf())),
        r(6, beta.map_or(&ctx.dummy, |b| b.buf())),
        r(13, tail.residual.map_or(&ctx.dummy, |t| t.buf())),
        w(8, y.buf()),
    ];
    let pt = params(d, flags(gamma, beta) | tail_flags(&tail), nsplit, chunk, momentum);
    ctx.launch(k("batchnorm_apply_fwd_f32"), pt, &binds, ctx.grid1(d.rows * c))
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_fwd_eval(
    ctx: &Context, x: &WgpuStorage, gamma: Option<&WgpuStorage>, beta: Option<&WgpuStorage>, running_mean: &WgpuStorage,
    running_var: &WgpuStorage, tail: BnTail<'_, WgpuStorage>, y: &WgpuStorage, d: &NormDims,
) -> Result<()> {
    let binds = [
        r(1, x.buf()),
        r(3, running_mean.buf()),
        r(4, running_var.buf()),
        r(5, gamma.map_or(&ctx.dummy, |g| g.buf())),
        r(6, beta.map_or(&ctx.dummy, |b| b.buf())),
        r(13, tail.residual.map_or(&ctx.dummy, |t| t.buf())),
        w(8, y.buf()),
    ];
    let k = kernel("batchnorm_eval", FAMILY, "batchnorm_eval_fwd_f32");
    ctx.launch(k, params(d, flags(gamma, beta) | tail_flags(&tail), 1, 1, 0.0), &binds, ctx.grid1(d.rows * d.channels))
}

impl NormOps for WgpuBackend {
    fn batchnorm_fwd_train(&self, x: &WgpuStorage, bn: BnTrain<'_, WgpuStorage>, d: &NormDims) -> Result<()> {
        batchnorm_fwd_train(self, x, bn, d)
    }

    fn batchnorm_fwd_eval(
        &self, x: &WgpuStorage, gamma: Option<&WgpuStorage>, beta: Option<&WgpuStorage>, running_mean: &WgpuStorage,
        running_var: &WgpuStorage, tail: BnTail<'_, WgpuStorage>, y: &WgpuStorage, d: &NormDims,
    ) -> Result<()> {
        batchnorm_fwd_eval(&self.ctx, x, gamma, beta, running_mean, running_var, tail, y, d)
    }

    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd(
        &self, x: &WgpuStorage, dy: &WgpuStorage, relu_out: Option<&WgpuStorage>, gamma: Option<&WgpuStorage>, _beta: Option<&WgpuStorage>,
        mean: &WgpuStorage, invstd: &WgpuStorage, dx: &WgpuStorage, dresidual: Option<&WgpuStorage>, dgamma: Option<&WgpuStorage>, dbeta: Option<&WgpuStorage>,
        d: &NormDims,
    ) -> Result<()> {
        let be = self;
        let ctx = &*be.ctx;
        let c = d.channels;
        let (nsplit, chunk) = split(d.rows, c);
        let p = || params(d, flags(gamma, None), nsplit, chunk, 0.0);
        let k = |entry| kernel("batchnorm_bwd", FAMILY, entry);
        // The ReLU tail's mask is ReLU's own backward pass here, with its output for its input
        // (relu(z) > 0 exactly where z > 0): fused, it would bind more storage buffers than
        // WebGPU's default 8 per stage. The masked dy is the residual's gradient too.
        let tmp_masked = if relu_out.is_some() && dresidual.is_none() { Some(be.storage(d.rows * c)?) } else { None };
        let dy = match relu_out {
            Some(y) => {
                let masked = dresidual.or(tmp_masked.as_ref()).expect("a buffer for the masked gradient");
                super::elementwise::unary_bwd(ctx, Unary::Relu, y, dy, masked, d.rows * c)?;
                masked
            }
            None => dy,
        };
        let part = be.storage(nsplit * c * 2)?;
        let binds = [r(1, x.buf()), r(2, dy.buf()), r(3, mean.buf()), r(4, invstd.buf()), w(8, part.buf())];
        ctx.launch(k("batchnorm_stats_bwd_f32"), p(), &binds, ctx.grid1(nsplit * c))?;
        // sum(dy) is dbeta and sum(dy * xhat) is dgamma; temporaries when not wanted.
        let tmp_b = if dbeta.is_none() { Some(be.storage(c)?) } else { None };
        let tmp_g = if dgamma.is_none() { Some(be.storage(c)?) } else { None };
        let (sum_dy, sum_dyx) = match (dbeta.or(tmp_b.as_ref()), dgamma.or(tmp_g.as_ref())) {
            (Some(b), Some(g)) => (b, g),
            _ => return Err(crate::error::Error::Invalid { op: "batchnorm_bwd", msg: "internal: missing sum buffers".into() }),
        };
        ctx.launch(k("colstats_finalize_bwd_f32"), p(), &[r(7, part.buf()), w(8, sum_dy.buf()), w(9, sum_dyx.buf())], ctx.grid1(c))?;
        let binds = [
            r(1, x.buf()),
            r(2, dy.buf()),
            r(3, mean.buf()),
            r(4, invstd.buf()),
            r(5, gamma.map_or(&ctx.dummy, |g| g.buf())),
            r(11, sum_dy.buf()),
            r(12, sum_dyx.buf()),
            w(8, dx.buf()),
        ];
        ctx.launch(k("batchnorm_dx_bwd_f32"), p(), &binds, ctx.grid1(d.rows * c))
    }

    fn l2_normalize_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, norm: &WgpuStorage, d: &NormDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let binds = [r(1, x.buf()), w(8, y.buf()), w(9, norm.buf())];
        ctx.launch(kernel("l2_normalize", FAMILY, "l2_normalize_fwd_f32"), params(d, 0, 1, 1, 0.0), &binds, grid(d.rows, 1))
    }

    fn l2_normalize_bwd(&self, x: &WgpuStorage, dy: &WgpuStorage, norm: &WgpuStorage, dx: &WgpuStorage, d: &NormDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let binds = [r(1, x.buf()), r(2, dy.buf()), r(3, norm.buf()), w(8, dx.buf())];
        ctx.launch(kernel("l2_normalize_bwd", FAMILY, "l2_normalize_bwd_f32"), params(d, 0, 1, 1, 0.0), &binds, grid(d.rows, 1))
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self, x: &WgpuStorage, gamma: &WgpuStorage, beta: &WgpuStorage, y: &WgpuStorage, save_mean: &WgpuStorage, save_rstd: &WgpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let binds = [r(1, x.buf()), r(5, gamma.buf()), r(6, beta.buf()), w(8, y.buf()), w(9, save_mean.buf()), w(10, save_rstd.buf())];
        ctx.launch(kernel("layernorm", FAMILY, "layernorm_fwd_f32"), params(d, 3, 1, 1, 0.0), &binds, grid(d.rows, 1))
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self, x: &WgpuStorage, dy: &WgpuStorage, gamma: &WgpuStorage, mean: &WgpuStorage, rstd: &WgpuStorage, dx: &WgpuStorage,
        dgamma: &WgpuStorage, dbeta: &WgpuStorage, d: &NormDims,
    ) -> Result<()> {
        let ctx = &*self.ctx;
        let c = d.channels;
        let (nsplit, chunk) = split(d.rows, c);
        let p = || params(d, 3, nsplit, chunk, 0.0);
        let k = |entry| kernel("layernorm_bwd", FAMILY, entry);
        let binds = [r(1, x.buf()), r(2, dy.buf()), r(3, mean.buf()), r(4, rstd.buf()), r(5, gamma.buf()), w(8, dx.buf())];
        ctx.launch(k("layernorm_dx_bwd_f32"), p(), &binds, grid(d.rows, 1))?;
        let part = self.storage(nsplit * c * 2)?;
        let binds = [r(1, x.buf()), r(2, dy.buf()), r(3, mean.buf()), r(4, rstd.buf()), w(8, part.buf())];
        ctx.launch(k("layernorm_stats_bwd_f32"), p(), &binds, ctx.grid1(nsplit * c))?;
        ctx.launch(k("colstats_finalize_bwd_f32"), p(), &[r(7, part.buf()), w(8, dgamma.buf()), w(9, dbeta.buf())], ctx.grid1(c))
    }

    fn logsumexp_fwd(&self, x: &WgpuStorage, lse: &WgpuStorage, d: &NormDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("logsumexp", FAMILY, "logsumexp_fwd_f32");
        ctx.launch(k, params(d, 0, 1, 1, 0.0), &[r(1, x.buf()), w(8, lse.buf())], grid(d.rows, 1))
    }

    fn logsumexp_bwd(&self, x: &WgpuStorage, lse: &WgpuStorage, dlse: &WgpuStorage, dx: &WgpuStorage, d: &NormDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("logsumexp_bwd", FAMILY, "logsumexp_bwd_f32");
        ctx.launch(k, params(d, 0, 1, 1, 0.0), &[r(1, x.buf()), r(2, dlse.buf()), r(3, lse.buf()), w(8, dx.buf())], grid(d.rows, 1))
    }

    fn softmax_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, d: &NormDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("softmax", FAMILY, "softmax_fwd_f32");
        ctx.launch(k, params(d, 0, 1, 1, 0.0), &[r(1, x.buf()), w(8, y.buf())], grid(d.rows, 1))
    }

    fn softmax_bwd(&self, y: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, d: &NormDims) -> Result<()> {
        let ctx: &Context = &self.ctx;
        let k = kernel("softmax_bwd", FAMILY, "softmax_bwd_f32");
        ctx.launch(k, params(d, 0, 1, 1, 0.0), &[r(1, y.buf()), r(2, dy.buf()), w(8, dx.buf())], grid(d.rows, 1))
    }
}
