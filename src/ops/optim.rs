//! Fused in-place parameter updates: SGD with momentum, AdamW, and the momentum encoders' EMA.

use crate::backend::*;
use crate::error::{Error, Result, shape_err};
use crate::tensor::Tensor;

use super::same_dtype;

/// One parameter's share of a fused SGD step.
pub struct SgdSlot<'a, B: Backend> {
    pub param: &'a Tensor<B>,
    pub grad: &'a Tensor<B>,
    pub momentum_buf: &'a Tensor<B>,
    pub lr: f32,
    pub weight_decay: f32,
}

/// Updates every parameter (and its momentum buffer) in place, in one backend call.
pub fn sgd_step<B: Backend>(slots: &[SgdSlot<'_, B>], momentum: f32) -> Result<()> {
    let Some(first) = slots.first() else { return Ok(()) };
    first.param.backend().sgd_step(&sgd_tensors(slots)?, momentum, None)
}

/// `sgd_step` with every per-step value in device memory, as a recorded step (a CUDA graph)
/// needs: row i of `hyper` [rows >= slots, 2] holds slot i's learning rate and weight decay (the
/// slots' own are ignored), and nothing is updated when one of `gate`'s values is not finite.
pub fn sgd_step_on_device<B: Backend>(slots: &[SgdSlot<'_, B>], momentum: f32, hyper: &Tensor<B>, gate: &Tensor<B>) -> Result<()> {
    let Some(first) = slots.first() else { return Ok(()) };
    if hyper.dims() != 2 || hyper.shape()[1] != 2 || hyper.shape()[0] < slots.len() || gate.dims() != 1 {
        return Err(shape_err("sgd_step", "the step values must be [rows >= tensors, 2] and the gate a vector", &[hyper.shape(), gate.shape()]));
    }
    let on = SgdOnDevice { hyper: hyper.storage(), gate: gate.storage(), gate_len: gate.numel() };
    first.param.backend().sgd_step(&sgd_tensors(slots)?, momentum, Some(on))
}

/// The slots as the backend takes them, checked.
fn sgd_tensors<'a, B: Backend>(slots: &[SgdSlot<'a, B>]) -> Result<Vec<SgdTensor<'a, B::Storage>>> {
    let mut ts = Vec::with_capacity(slots.len());
    for s in slots {
        same_dtype("sgd_step", &[s.param, s.grad, s.momentum_buf])?;
        if s.grad.shape() != s.param.shape() || s.momentum_buf.shape() != s.param.shape() {
            return Err(shape_err(
                "sgd_step",
                "param, grad and momentum must agree",
                &[s.param.shape(), s.grad.shape(), s.momentum_buf.shape()],
            ));
        }
        if s.param.same_storage(s.grad) || s.param.same_storage(s.momentum_buf) || s.grad.same_storage(s.momentum_buf) {
            return Err(Error::Invalid { op: "sgd_step", msg: "param, grad and momentum must be distinct buffers".into() });
        }
        ts.push(SgdTensor {
            param: s.param.storage(),
            grad: s.grad.storage(),
            momentum_buf: s.momentum_buf.storage(),
            len: s.param.numel(),
            lr: s.lr,
            weight_decay: s.weight_decay,
        });
    }
    Ok(ts)
}

/// One parameter's share of a fused AdamW step.
pub struct AdamWSlot<'a, B: Backend> {
    pub param: &'a Tensor<B>,
    pub grad: &'a Tensor<B>,
    pub exp_avg: &'a Tensor<B>,
    pub exp_avg_sq: &'a Tensor<B>,
    pub lr: f32,
    pub weight_decay: f32,
    /// The parameter's step count including this update (1 at its first).
    pub step: u64,
}

/// Updates every parameter and both its moments in place, in one backend call, as
/// `torch.optim.AdamW` (see `AdamWTensor`).
pub fn adamw_step<B: Backend>(slots: &[AdamWSlot<'_, B>], hyper: AdamWHyper) -> Result<()> {
    let Some(first) = slots.first() else { return Ok(()) };
    let mut ts = Vec::with_capacity(slots.len());
    for s in slots {
        let all = [s.param, s.grad, s.exp_avg, s.exp_avg_sq];
        same_dtype("adamw_step", &all)?;
        if all.iter().any(|t| t.shape() != s.param.shape()) {
            return Err(shape_err("adamw_step", "param, grad and moments must agree", &all.map(|t| t.shape())));
        }
        if (0..4).any(|i| (i + 1..4).any(|j| all[i].same_storage(all[j]))) {
            return Err(Error::Invalid { op: "adamw_step", msg: "param, grad and moments must be distinct buffers".into() });
        }
        if s.step == 0 {
            return Err(Error::Invalid { op: "adamw_step", msg: "the step count starts at 1".into() });
        }
        ts.push(AdamWTensor {
            param: s.param.storage(),
            grad: s.grad.storage(),
            exp_avg: s.exp_avg.storage(),
            exp_avg_sq: s.exp_avg_sq.storage(),
            len: s.param.numel(),
            lr: s.lr,
            weight_decay: s.weight_decay,
            step: s.step,
        });
    }
    first.param.backend().adamw_step(&ts, hyper)
}

/// target = tau * target + (1 - tau) * source for every (target, source) pair, in place, in one
/// backend call: the momentum encoder of BYOL and MoCo following the online network.
pub fn ema_update<B: Backend>(pairs: &[(&Tensor<B>, &Tensor<B>)], tau: f32) -> Result<()> {
    let Some(first) = pairs.first() else { return Ok(()) };
    if !(0.0..=1.0).contains(&tau) {
        return Err(Error::Invalid { op: "ema_update", msg: format!("tau {tau} is outside [0, 1]") });
    }
    let mut ts = Vec::with_capacity(pairs.len());
    for (t, s) in pairs {
        same_dtype("ema_update", &[t, s])?;
        if t.shape() != s.shape() {
            return Err(shape_err("ema_update", "target and source must agree", &[t.shape(), s.shape()]));
        }
        if t.same_storage(s) {
            return Err(Error::Invalid { op: "ema_update", msg: "target and source must be distinct buffers".into() });
        }
        ts.push(EmaTensor { target: t.storage(), source: s.storage(), len: t.numel() });
    }
    first.0.backend().ema_update(&ts, tau)
}
