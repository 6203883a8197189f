//! Fused optimiser updates over many tensors: SGD (momentum, weight decay) and EMA.

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
    /// One fused in-place EMA update over many tensors (one launch on a GPU):
    /// target = tau * target + (1 - tau) * source.
    fn ema_update(&self, tensors: &[EmaTensor<'_, Self::Storage>], tau: f32) -> Result<()>;
}
