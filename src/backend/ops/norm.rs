//! Normalisations and row reductions: batch norm (with its fused tail), layer norm, L2
//! normalisation, softmax and log-sum-exp.

use super::CoreOps;
use crate::error::Result;

/// Normalisation over `rows` x `channels` (channels last). Batch norm reduces over rows per
/// channel; layer norm and softmax reduce over channels per row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormDims {
    pub rows: usize,
    pub channels: usize,
    pub eps: f32,
}

/// Running statistics updated by a training-mode batch norm, PyTorch's rule:
/// running = (1 - momentum) * running + momentum * batch (variance unbiased).
pub struct RunningStats<'a, S> {
    pub mean: &'a S,
    pub var: &'a S,
    pub momentum: f32,
}

/// What a batch norm's output pass does after normalising, fused so the activation is written
/// once: y = relu?(bn(x) + residual?). A ResNet block's last norm takes the shortcut and the
/// ReLU, the others the ReLU alone.
pub struct BnTail<'a, S> {
    pub residual: Option<&'a S>,
    pub relu: bool,
}

impl<S> BnTail<'_, S> {
    /// Plain batch norm.
    pub const NONE: Self = BnTail { residual: None, relu: false };
}

/// A training batch norm's parameters and outputs: gamma and beta (affine, optional), the fused
/// tail, y, the saved mean and 1/sqrt(var + eps) per channel, and the running statistics to
/// update when given.
pub struct BnTrain<'a, S> {
    pub gamma: Option<&'a S>,
    pub beta: Option<&'a S>,
    pub tail: BnTail<'a, S>,
    pub y: &'a S,
    pub save_mean: &'a S,
    pub save_invstd: &'a S,
    pub running: Option<RunningStats<'a, S>>,
}

impl<S> Clone for BnTail<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for BnTail<'_, S> {}

pub trait NormOps: CoreOps {
    /// Training batch norm: batch statistics (biased variance for normalising), saves mean and
    /// 1/sqrt(var + eps) per channel for backward, updates running statistics when given;
    /// `tail` is applied in the same output pass.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_train(&self, x: &Self::Storage, bn: BnTrain<'_, Self::Storage>, d: &NormDims) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_eval(
        &self, x: &Self::Storage, gamma: Option<&Self::Storage>, beta: Option<&Self::Storage>, running_mean: &Self::Storage,
        running_var: &Self::Storage, tail: BnTail<'_, Self::Storage>, y: &Self::Storage, d: &NormDims,
    ) -> Result<()>;
    /// dgamma / dbeta are written when given (affine batch norm). `relu_out`: the forward output
    /// when its tail ended in a ReLU, so dy counts only where it is positive; that masked dy is
    /// also the residual's gradient, written to `dresidual` when given. `beta` (with gamma, the
    /// saved statistics and x) lets a backend recompute where a tail without residual passed the
    /// ReLU instead of reading relu_out (CUDA).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd(
        &self, x: &Self::Storage, dy: &Self::Storage, relu_out: Option<&Self::Storage>, gamma: Option<&Self::Storage>,
        beta: Option<&Self::Storage>, save_mean: &Self::Storage, save_invstd: &Self::Storage, dx: &Self::Storage, dresidual: Option<&Self::Storage>,
        dgamma: Option<&Self::Storage>, dbeta: Option<&Self::Storage>, d: &NormDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self, x: &Self::Storage, gamma: &Self::Storage, beta: &Self::Storage, y: &Self::Storage, save_mean: &Self::Storage,
        save_rstd: &Self::Storage, d: &NormDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self, x: &Self::Storage, dy: &Self::Storage, gamma: &Self::Storage, save_mean: &Self::Storage, save_rstd: &Self::Storage,
        dx: &Self::Storage, dgamma: &Self::Storage, dbeta: &Self::Storage, d: &NormDims,
    ) -> Result<()>;
    /// Row-wise L2 normalisation (PyTorch's F.normalize): y = x / n with n = max(|x|, eps) per
    /// row of `channels`; n is saved for the backward pass.
    fn l2_normalize_fwd(&self, x: &Self::Storage, y: &Self::Storage, norm: &Self::Storage, d: &NormDims) -> Result<()>;
    /// dx = dy / n - x (x . dy) / n^3 (dy / n where the norm was clamped at eps).
    fn l2_normalize_bwd(&self, x: &Self::Storage, dy: &Self::Storage, norm: &Self::Storage, dx: &Self::Storage, d: &NormDims)
    -> Result<()>;
    /// Softmax over the last axis (`channels` of NormDims; eps unused).
    fn softmax_fwd(&self, x: &Self::Storage, y: &Self::Storage, d: &NormDims) -> Result<()>;
    fn softmax_bwd(&self, y: &Self::Storage, dy: &Self::Storage, dx: &Self::Storage, d: &NormDims) -> Result<()>;
    /// lse[r] = log sum_j exp(x[r, j]) over the last axis (rows x channels; eps unused).
    fn logsumexp_fwd(&self, x: &Self::Storage, lse: &Self::Storage, d: &NormDims) -> Result<()>;
    /// dx[r, j] = dlse[r] exp(x[r, j] - lse[r]).
    fn logsumexp_bwd(&self, x: &Self::Storage, lse: &Self::Storage, dlse: &Self::Storage, dx: &Self::Storage, d: &NormDims) -> Result<()>;
}
