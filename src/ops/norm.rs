//! Normalisations over the last (channel) axis: batch norm with its fused ResNet tail (and the
//! conv + batch norm fusion), layer norm, row L2 normalisation, softmax and log-sum-exp, as the
//! backends' norm family.

use crate::backend::*;
use crate::dtype::DType;
use crate::error::{Error, Result, shape_err};
use crate::tensor::Tensor;

use super::{expect_shape, out, same_dtype};

fn norm_dims<B: Backend>(op: &'static str, x: &Tensor<B>, eps: f32) -> Result<NormDims> {
    let c = *x.shape().last().ok_or_else(|| shape_err(op, "needs at least 1 dim", &[x.shape()]))?;
    if c == 0 {
        return Err(shape_err(op, "zero channels", &[x.shape()]));
    }
    Ok(NormDims { rows: x.numel() / c, channels: c, eps })
}

fn per_channel<B: Backend>(op: &'static str, what: &str, t: Option<&Tensor<B>>, c: usize) -> Result<()> {
    match t {
        Some(t) => expect_shape(op, what, t, &[c]),
        None => Ok(()),
    }
}

/// Batch statistics for a normalisation over all axes but the last.
pub struct BnSaved<B: Backend> {
    pub mean: Tensor<B>,
    pub invstd: Tensor<B>,
}

/// Training-mode batch norm over all axes but the last (channels-last). Returns y and the saved
/// statistics; updates `running` = (mean, var, momentum) in place when given.
pub fn batchnorm_train<B: Backend>(
    x: &Tensor<B>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, running: Option<(&Tensor<B>, &Tensor<B>, f32)>, eps: f32,
) -> Result<(Tensor<B>, BnSaved<B>)> {
    batchnorm_train_tail(x, gamma, beta, running, eps, None, false)
}

/// The dtype a batch norm of `x` computes in, and gives its outputs and gradients: x's own,
/// checked as every op checks it, or F32 for a convolution output the backend stores as BF16
/// for batch norm alone (`ConvOps::conv2d_batchnorm_out_dtype`: its kernels read it as F32 values).
fn bn_dtype<B: Backend>(op: &'static str, x: &Tensor<B>) -> Result<DType> {
    if x.dtype() == DType::BF16 && x.backend().conv2d_batchnorm_out_dtype() == DType::BF16 {
        return Ok(DType::F32);
    }
    same_dtype(op, &[x])?;
    Ok(x.dtype())
}

/// `t` (a batch norm's residual or dy) in the norm's dtype (bn_dtype).
fn in_bn_dtype<B: Backend>(op: &'static str, t: &Tensor<B>, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::DType { op, dtype: format!("{dtype} mixed with {}", t.dtype()), backend: t.backend().name() });
    }
    Ok(())
}

/// The checks every batch-norm forward makes: x's dims, gamma and beta per channel, and a fused
/// tail's shortcut of x's shape and the norm's dtype (bn_dtype, also returned).
fn bn_dims<B: Backend>(
    op: &'static str, x: &Tensor<B>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, residual: Option<&Tensor<B>>, eps: f32,
) -> Result<(NormDims, DType)> {
    let dtype = bn_dtype(op, x)?;
    if let Some(r) = residual {
        in_bn_dtype(op, r, dtype)?;
        expect_shape(op, "residual", r, x.shape())?;
    }
    let d = norm_dims(op, x, eps)?;
    per_channel(op, "gamma", gamma, d.channels)?;
    per_channel(op, "beta", beta, d.channels)?;
    Ok((d, dtype))
}

/// batchnorm_train with its output pass fused with what follows in a ResNet:
/// y = relu?(bn(x) + residual?) (backend::BnTail).
pub fn batchnorm_train_tail<B: Backend>(
    x: &Tensor<B>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, running: Option<(&Tensor<B>, &Tensor<B>, f32)>, eps: f32,
    residual: Option<&Tensor<B>>, relu: bool,
) -> Result<(Tensor<B>, BnSaved<B>)> {
    let t = BnTrainOut::new(x, gamma, beta, running, eps, residual)?;
    x.backend().batchnorm_fwd_train(x.storage(), t.args(gamma, beta, running, residual, relu), &t.d)?;
    Ok((t.y, BnSaved { mean: t.mean, invstd: t.invstd }))
}

/// A training batch norm's checked dims and fresh outputs (y, mean, invstd).
struct BnTrainOut<B: Backend> {
    d: NormDims,
    y: Tensor<B>,
    mean: Tensor<B>,
    invstd: Tensor<B>,
}

impl<B: Backend> BnTrainOut<B> {
    fn new(
        x: &Tensor<B>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, running: Option<(&Tensor<B>, &Tensor<B>, f32)>, eps: f32,
        residual: Option<&Tensor<B>>,
    ) -> Result<Self> {
        const OP: &str = "batchnorm";
        let (d, dtype) = bn_dims(OP, x, gamma, beta, residual, eps)?;
        if d.rows < 2 {
            return Err(shape_err(OP, "training batch norm needs more than one value per channel", &[x.shape()]));
        }
        if let Some((m, v, _)) = running {
            per_channel(OP, "running_mean", Some(m), d.channels)?;
            per_channel(OP, "running_var", Some(v), d.channels)?;
        }
        let new = |shape: &[usize]| Tensor::empty(x.backend(), shape, dtype);
        Ok(BnTrainOut { y: new(x.shape())?, mean: new(&[d.channels])?, invstd: new(&[d.channels])?, d })
    }

    /// The backend's view: these outputs with the given parameters and tail.
    fn args<'a>(
        &'a self, gamma: Option<&'a Tensor<B>>, beta: Option<&'a Tensor<B>>, running: Option<(&'a Tensor<B>, &'a Tensor<B>, f32)>,
        residual: Option<&'a Tensor<B>>, relu: bool,
    ) -> BnTrain<'a, B::Storage> {
        BnTrain {
            gamma: gamma.map(|t| t.storage()),
            beta: beta.map(|t| t.storage()),
            tail: BnTail { residual: residual.map(|t| t.storage()), relu },
            y: self.y.storage(),
            save_mean: self.mean.storage(),
            save_invstd: self.invstd.storage(),
            running: running.map(|(m, v, momentum)| RunningStats { mean: m.storage(), var: v.storage(), momentum }),
        }
    }
}

/// conv2d of x, then batchnorm_train_tail of its output, in one backend call
/// (Backend::conv2d_batchnorm_fwd_train). Returns the convolution's output (batch norm's
/// backward reads it, and nothing else does: the backend may store it as BF16,
/// `conv2d_batchnorm_out_dtype`), y and the saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batchnorm_train<B: Backend>(
    x: &Tensor<B>, w: &Tensor<B>, cd: &Conv2dDims, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>,
    running: Option<(&Tensor<B>, &Tensor<B>, f32)>, eps: f32, residual: Option<&Tensor<B>>, relu: bool,
) -> Result<(Tensor<B>, Tensor<B>, BnSaved<B>)> {
    same_dtype("conv2d", &[x, w])?;
    expect_shape("conv2d", "input", x, &[cd.n, cd.h, cd.w, cd.c_in])?;
    expect_shape("conv2d", "weight", w, &[cd.c_out, cd.kh, cd.kw, cd.c_in / cd.groups])?;
    let c_dtype = if x.dtype() == DType::F32 { x.backend().conv2d_batchnorm_out_dtype() } else { x.dtype() };
    let c = Tensor::empty(x.backend(), &[cd.n, cd.oh, cd.ow, cd.c_out], c_dtype)?;
    let t = BnTrainOut::new(&c, gamma, beta, running, eps, residual)?;
    x.backend().conv2d_batchnorm_fwd_train(
        x.storage(),
        w.storage(),
        c.storage(),
        cd,
        t.args(gamma, beta, running, residual, relu),
        &t.d,
    )?;
    Ok((c, t.y, BnSaved { mean: t.mean, invstd: t.invstd }))
}

pub fn batchnorm_eval<B: Backend>(
    x: &Tensor<B>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, running_mean: &Tensor<B>, running_var: &Tensor<B>, eps: f32,
) -> Result<Tensor<B>> {
    batchnorm_eval_tail(x, gamma, beta, running_mean, running_var, eps, None, false)
}

/// batchnorm_eval with a fused tail, as batchnorm_train_tail.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval_tail<B: Backend>(
    x: &Tensor<B>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, running_mean: &Tensor<B>, running_var: &Tensor<B>, eps: f32,
    residual: Option<&Tensor<B>>, relu: bool,
) -> Result<Tensor<B>> {
    const OP: &str = "batchnorm_eval";
    same_dtype(OP, &[x, running_mean, running_var])?;
    let (d, _) = bn_dims(OP, x, gamma, beta, residual, eps)?;
    per_channel(OP, "running_mean", Some(running_mean), d.channels)?;
    per_channel(OP, "running_var", Some(running_var), d.channels)?;
    let y = out(x, x.shape())?;
    x.backend().batchnorm_fwd_eval(
        x.storage(),
        gamma.map(|t| t.storage()),
        beta.map(|t| t.storage()),
        running_mean.storage(),
        running_var.storage(),
        BnTail { residual: residual.map(|t| t.storage()), relu },
        y.storage(),
        &d,
    )?;
    Ok(y)
}

/// Returns dx and, when `affine`, (dgamma, dbeta).
pub fn batchnorm_bwd<B: Backend>(
    x: &Tensor<B>, dy: &Tensor<B>, gamma: Option<&Tensor<B>>, saved: &BnSaved<B>, affine: bool,
) -> Result<(Tensor<B>, Option<(Tensor<B>, Tensor<B>)>)> {
    let (dx, dgb, _) = batchnorm_bwd_tail(x, dy, None, gamma, None, saved, affine, false)?;
    Ok((dx, dgb))
}

/// Gradients of a batch norm (train mode) with a fused tail: `relu_out` is the forward output
/// when the tail ended in a ReLU; `beta` the forward's (NormOps::batchnorm_bwd). Returns dx,
/// (dgamma, dbeta) when `affine`, and the residual's gradient when `residual` (dy masked by the
/// ReLU; dy itself without one).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_bwd_tail<B: Backend>(
    x: &Tensor<B>, dy: &Tensor<B>, relu_out: Option<&Tensor<B>>, gamma: Option<&Tensor<B>>, beta: Option<&Tensor<B>>, saved: &BnSaved<B>,
    affine: bool, residual: bool,
) -> Result<BnGrads<B>> {
    const OP: &str = "batchnorm_bwd";
    let dtype = bn_dtype(OP, x)?;
    same_dtype(OP, &[dy])?;
    in_bn_dtype(OP, dy, dtype)?;
    expect_shape(OP, "dy", dy, x.shape())?;
    if let Some(y) = relu_out {
        expect_shape(OP, "relu_out", y, x.shape())?;
    }
    let d = norm_dims(OP, x, 0.0)?;
    let dx = out(dy, x.shape())?;
    let dgb = if affine { Some((out(dy, &[d.channels])?, out(dy, &[d.channels])?)) } else { None };
    let dres = if residual && relu_out.is_some() { Some(out(dy, x.shape())?) } else { None };
    x.backend().batchnorm_bwd(
        x.storage(),
        dy.storage(),
        relu_out.map(|t| t.storage()),
        gamma.map(|t| t.storage()),
        beta.map(|t| t.storage()),
        saved.mean.storage(),
        saved.invstd.storage(),
        dx.storage(),
        dres.as_ref().map(|t| t.storage()),
        dgb.as_ref().map(|g| g.0.storage()),
        dgb.as_ref().map(|g| g.1.storage()),
        &d,
    )?;
    let dres = if residual && relu_out.is_none() { Some(dy.clone()) } else { dres };
    Ok((dx, dgb, dres))
}

/// dx, (dgamma, dbeta) when affine, the residual's gradient when the tail had one.
pub type BnGrads<B> = (Tensor<B>, Option<(Tensor<B>, Tensor<B>)>, Option<Tensor<B>>);

pub fn layernorm<B: Backend>(x: &Tensor<B>, gamma: &Tensor<B>, beta: &Tensor<B>, eps: f32) -> Result<(Tensor<B>, BnSaved<B>)> {
    const OP: &str = "layernorm";
    same_dtype(OP, &[x, gamma, beta])?;
    let d = norm_dims(OP, x, eps)?;
    per_channel(OP, "gamma", Some(gamma), d.channels)?;
    per_channel(OP, "beta", Some(beta), d.channels)?;
    let y = out(x, x.shape())?;
    let mean = out(x, &[d.rows])?;
    let rstd = out(x, &[d.rows])?;
    x.backend().layernorm_fwd(x.storage(), gamma.storage(), beta.storage(), y.storage(), mean.storage(), rstd.storage(), &d)?;
    Ok((y, BnSaved { mean, invstd: rstd }))
}

/// Returns (dx, dgamma, dbeta).
pub fn layernorm_bwd<B: Backend>(
    x: &Tensor<B>, dy: &Tensor<B>, gamma: &Tensor<B>, saved: &BnSaved<B>,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    const OP: &str = "layernorm_bwd";
    same_dtype(OP, &[x, dy, gamma])?;
    expect_shape(OP, "dy", dy, x.shape())?;
    let d = norm_dims(OP, x, 0.0)?;
    let (dx, dg, db) = (out(x, x.shape())?, out(x, &[d.channels])?, out(x, &[d.channels])?);
    x.backend().layernorm_bwd(
        x.storage(),
        dy.storage(),
        gamma.storage(),
        saved.mean.storage(),
        saved.invstd.storage(),
        dx.storage(),
        dg.storage(),
        db.storage(),
        &d,
    )?;
    Ok((dx, dg, db))
}

/// Row-wise L2 normalisation over the last axis: (y, the clamped row norms).
pub fn l2_normalize<B: Backend>(x: &Tensor<B>, eps: f32) -> Result<(Tensor<B>, Tensor<B>)> {
    const OP: &str = "l2_normalize";
    same_dtype(OP, &[x])?;
    let d = norm_dims(OP, x, eps)?;
    let (y, norm) = (out(x, x.shape())?, out(x, &[d.rows])?);
    x.backend().l2_normalize_fwd(x.storage(), y.storage(), norm.storage(), &d)?;
    Ok((y, norm))
}

pub fn l2_normalize_bwd<B: Backend>(x: &Tensor<B>, dy: &Tensor<B>, norm: &Tensor<B>, eps: f32) -> Result<Tensor<B>> {
    const OP: &str = "l2_normalize_bwd";
    same_dtype(OP, &[x, dy, norm])?;
    expect_shape(OP, "dy", dy, x.shape())?;
    let d = norm_dims(OP, x, eps)?;
    expect_shape(OP, "norm", norm, &[d.rows])?;
    let dx = out(x, x.shape())?;
    x.backend().l2_normalize_bwd(x.storage(), dy.storage(), norm.storage(), dx.storage(), &d)?;
    Ok(dx)
}

/// Softmax over the last axis.
pub fn softmax<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("softmax", &[x])?;
    let d = norm_dims("softmax", x, 0.0)?;
    let y = out(x, x.shape())?;
    x.backend().softmax_fwd(x.storage(), y.storage(), &d)?;
    Ok(y)
}

pub fn softmax_bwd<B: Backend>(y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("softmax_bwd", &[y, dy])?;
    expect_shape("softmax_bwd", "dy", dy, y.shape())?;
    let d = norm_dims("softmax_bwd", y, 0.0)?;
    let dx = out(y, y.shape())?;
    y.backend().softmax_bwd(y.storage(), dy.storage(), dx.storage(), &d)?;
    Ok(dx)
}

/// log sum exp over the last axis: [.., c] -> [..].
pub fn logsumexp<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("logsumexp", &[x])?;
    let d = norm_dims("logsumexp", x, 0.0)?;
    let lse = out(x, &x.shape()[..x.dims() - 1])?;
    x.backend().logsumexp_fwd(x.storage(), lse.storage(), &d)?;
    Ok(lse)
}

/// dx = dlse exp(x - lse), dlse broadcast along the last axis.
pub fn logsumexp_bwd<B: Backend>(x: &Tensor<B>, lse: &Tensor<B>, dlse: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("logsumexp_bwd", &[x, lse, dlse])?;
    let rows = &x.shape()[..x.dims().saturating_sub(1)];
    expect_shape("logsumexp_bwd", "lse", lse, rows)?;
    expect_shape("logsumexp_bwd", "dlse", dlse, rows)?;
    let d = norm_dims("logsumexp_bwd", x, 0.0)?;
    let dx = out(x, x.shape())?;
    x.backend().logsumexp_bwd(x.storage(), lse.storage(), dlse.storage(), dx.storage(), &d)?;
    Ok(dx)
}
