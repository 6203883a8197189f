//! Fused optimiser updates over many tensors: SGD (momentum, weight decay), AdamW and EMA.

use super::CoreOps;
use crate::error::Result;

/// One parameter tensor in a fused SGD step. PyTorch's SGD semantics:
/// d = grad + weight_decay * param; buf = momentum * buf + d; param -= lr * buf.
pub struct SgdTensor<'a, S> {
    pub param: &'a S,
    pub grad: &'a S,
    pub momentum_buf: &'a S,
    pub len: usize,
    pub lr: f32,
    pub weight_decay: f32,
}

/// Values an SGD step reads from device memory instead of `SgdTensor`, so that a recorded step
/// (a CUDA graph, `optim::StepGraph`) replays with each step's own: row i of `hyper`
/// [rows >= tensors, 2] holds tensor i's learning rate and weight decay; nothing is updated when
/// one of `gate`'s values is not finite (the step's loss and gradient sum: the check a step makes
/// before it updates, made on the device).
#[derive(Clone, Copy)]
pub struct SgdOnDevice<'a, S> {
    pub hyper: &'a S,
    pub gate: &'a S,
    pub gate_len: usize,
}

/// For backends that read an `SgdOnDevice` on the host (CPU, WGSL): the tensors with the
/// table's learning rates and weight decays, or None when the gate holds a non-finite value.
pub fn sgd_on_host<'a, B: CoreOps>(
    b: &B, tensors: &[SgdTensor<'a, B::Storage>], on_device: Option<SgdOnDevice<'_, B::Storage>>,
) -> Result<Option<Vec<SgdTensor<'a, B::Storage>>>> {
    let copy = |t: &SgdTensor<'a, B::Storage>, lr, weight_decay| SgdTensor { lr, weight_decay, ..*t };
    let Some(d) = on_device else { return Ok(Some(tensors.iter().map(|t| copy(t, t.lr, t.weight_decay)).collect())) };
    if b.download_f32(d.gate)?.iter().take(d.gate_len).any(|v| !v.is_finite()) {
        return Ok(None);
    }
    let hyper = b.download_f32(d.hyper)?;
    if hyper.len() < 2 * tensors.len() {
        return Err(crate::error::Error::Invalid {
            op: "sgd_step",
            msg: format!("{} step values for {} tensors", hyper.len(), tensors.len()),
        });
    }
    Ok(Some(tensors.iter().enumerate().map(|(i, t)| copy(t, hyper[2 * i], hyper[2 * i + 1])).collect()))
}

/// One parameter tensor in a fused AdamW step, `torch.optim.AdamW`'s semantics (decoupled
/// weight decay, bias-corrected moments, eps outside the square root):
/// p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
/// p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps).
pub struct AdamWTensor<'a, S> {
    pub param: &'a S,
    pub grad: &'a S,
    /// The first moment m (torch's `exp_avg`).
    pub exp_avg: &'a S,
    /// The second moment v (torch's `exp_avg_sq`).
    pub exp_avg_sq: &'a S,
    pub len: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// This tensor's step count including this update (1 at its first): the bias corrections'
    /// exponent.
    pub step: u64,
}

/// An AdamW step's settings shared by every tensor: the moments' decay rates and the
/// denominator's eps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// The per-tensor factors of an AdamW step, in f64 for every backend alike: (1 - lr wd, the
/// step size lr / (1 - b1^step), sqrt(1 - b2^step)).
pub fn adamw_factors(t: &AdamWTensor<'_, impl Sized>, h: &AdamWHyper) -> (f64, f64, f64) {
    let (lr, wd) = (t.lr as f64, t.weight_decay as f64);
    let step = t.step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - h.beta1.powi(step);
    let bc2 = 1.0 - h.beta2.powi(step);
    (1.0 - lr * wd, lr / bc1, bc2.sqrt())
}

/// One target tensor of a fused EMA update and the tensor it follows:
/// target = tau * target + (1 - tau) * source (BYOL's and MoCo's momentum encoders).
pub struct EmaTensor<'a, S> {
    pub target: &'a S,
    pub source: &'a S,
    pub len: usize,
}

pub trait OptimOps: CoreOps {
    /// One fused SGD-momentum-weight-decay update over many tensors (one launch on a GPU);
    /// with `on_device`, the learning rates and weight decays come from device memory and a
    /// non-finite gate skips the update (see SgdOnDevice).
    fn sgd_step(
        &self, tensors: &[SgdTensor<'_, Self::Storage>], momentum: f32, on_device: Option<SgdOnDevice<'_, Self::Storage>>,
    ) -> Result<()>;
    /// One fused AdamW update over many tensors (one launch on a GPU, up to its batch size):
    /// parameters and both moments in place (see AdamWTensor).
    fn adamw_step(&self, tensors: &[AdamWTensor<'_, Self::Storage>], hyper: AdamWHyper) -> Result<()>;
    /// One fused in-place EMA update over many tensors (one launch on a GPU):
    /// target = tau * target + (1 - tau) * source.
    fn ema_update(&self, tensors: &[EmaTensor<'_, Self::Storage>], tau: f32) -> Result<()>;
}
