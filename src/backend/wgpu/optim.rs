//! The SGD step, the AdamW step and the EMA update (shaders/optim.wgsl): one dispatch per tensor, all in the same
//! compute pass and submission (WebGPU cannot bind a variable number of buffers to one dispatch).

use super::WgpuBackend;
use super::WgpuStorage;
use super::context::{Context, Params, kernel, r, w};
use crate::backend::ops::*;
use crate::backend::{AdamWHyper, AdamWTensor, EmaTensor, SgdTensor, adamw_factors};
use crate::error::Result;

pub fn sgd_step(ctx: &Context, tensors: &[SgdTensor<'_, WgpuStorage>], momentum: f32) -> Result<()> {
    for t in tensors {
        let p = Params::new().u(t.len).f(t.lr).f(t.weight_decay).f(momentum);
        let binds = [r(1, t.grad.buf()), w(2, t.param.buf()), w(3, t.momentum_buf.buf())];
        ctx.launch(kernel("sgd_step", "optim", "sgd_step_fwd_f32"), p, &binds, ctx.grid1(t.len))?;
    }
    Ok(())
}

pub fn adamw_step(ctx: &Context, tensors: &[AdamWTensor<'_, WgpuStorage>], h: AdamWHyper) -> Result<()> {
    for t in tensors {
        let (decay, step_size, bc2_sqrt) = adamw_factors(t, &h);
        // optim.wgsl's parameter block: n, three SGD slots unused, then AdamW's.
        let p = Params::new().u(t.len).f(0.0).f(0.0).f(0.0).f(decay as f32).f(step_size as f32).f(bc2_sqrt as f32);
        let p = p.f(h.beta1 as f32).f((1.0 - h.beta1) as f32).f(h.beta2 as f32).f((1.0 - h.beta2) as f32).f(h.eps as f32);
        let binds = [r(1, t.grad.buf()), w(2, t.param.buf()), w(3, t.exp_avg.buf()), w(4, t.exp_avg_sq.buf())];
        ctx.launch(kernel("adamw_step", "optim", "adamw_step_fwd_f32"), p, &binds, ctx.grid1(t.len))?;
    }
    Ok(())
}

pub fn ema_update(ctx: &Context, tensors: &[EmaTensor<'_, WgpuStorage>], tau: f32) -> Result<()> {
    for t in tensors {
        // optim.wgsl's parameter block: n, tau in the lr slot, two unused.
        let p = Params::new().u(t.len).f(tau).f(0.0).f(0.0);
        let binds = [r(1, t.source.buf()), w(2, t.target.buf())];
        ctx.launch(kernel("ema_update", "optim", "ema_update_fwd_f32"), p, &binds, ctx.grid1(t.len))?;
    }
    Ok(())
}

impl OptimOps for WgpuBackend {
    fn sgd_step(
        &self, tensors: &[SgdTensor<'_, WgpuStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, WgpuStorage>>,
    ) -> Result<()> {
        let Some(tensors) = crate::backend::sgd_on_host(self, tensors, on_device)? else { return Ok(()) };
        sgd_step(&self.ctx, &tensors, momentum)
    }

    fn adamw_step(&self, tensors: &[AdamWTensor<'_, WgpuStorage>], hyper: AdamWHyper) -> Result<()> {
        adamw_step(&self.ctx, tensors, hyper)
    }

    fn ema_update(&self, tensors: &[EmaTensor<'_, WgpuStorage>], tau: f32) -> Result<()> {
        ema_update(&self.ctx, tensors, tau)
    }
}
