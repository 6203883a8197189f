//! Validated ops: the one place that checks shapes and dtypes, allocates outputs and calls a
//! backend kernel. Bad input returns an error naming the op and the shapes, never a panic.
//! Forward and backward kernels both go through here, so the autograd rules stay short.

use crate::backend::*;
use crate::error::{Error, Result, shape_err};
use crate::tensor::{Tensor, numel};

fn same_dtype<B: Backend>(op: &'static str, ts: &[&Tensor<B>]) -> Result<()> {
    let d = ts[0].dtype();
    if !ts[0].backend().supports(d) {
        return Err(Error::DType { op, dtype: d.to_string(), backend: ts[0].backend().name() });
    }
    if let Some(t) = ts.iter().find(|t| t.dtype() != d) {
        return Err(Error::DType { op, dtype: format!("{} mixed with {}", d, t.dtype()), backend: t.backend().name() });
    }
    Ok(())
}

fn out<B: Backend>(like: &Tensor<B>, shape: &[usize]) -> Result<Tensor<B>> {
    Tensor::empty(like.backend(), shape, like.dtype())
}

fn expect_shape<B: Backend>(op: &'static str, what: &str, t: &Tensor<B>, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(shape_err(op, format!("{what} must have shape {shape:?}"), &[t.shape()]));
    }
    Ok(())
}

/// Leading dims and the last two: [.., r, c] -> (batch, r, c).
fn split_matrix(op: &'static str, s: &[usize]) -> Result<(usize, usize, usize)> {
    if s.len() < 2 {
        return Err(shape_err(op, "needs at least 2 dims", &[s]));
    }
    Ok((numel(&s[..s.len() - 2]), s[s.len() - 2], s[s.len() - 1]))
}

// ---- matmul ----------------------------------------------------------------------------------

/// op(a) . op(b) over matching leading (batch) dims: a [.., m, k] (or [.., k, m] with trans_a).
pub fn matmul<B: Backend>(a: &Tensor<B>, b: &Tensor<B>, trans_a: bool, trans_b: bool) -> Result<Tensor<B>> {
    const OP: &str = "matmul";
    same_dtype(OP, &[a, b])?;
    let (ba, ra, ca) = split_matrix(OP, a.shape())?;
    let (bb, rb, cb) = split_matrix(OP, b.shape())?;
    let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (k2, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if k != k2 || a.shape()[..a.dims() - 2] != b.shape()[..b.dims() - 2] || ba != bb {
        return Err(shape_err(OP, format!("inner or batch dims differ (trans_a={trans_a}, trans_b={trans_b})"), &[a.shape(), b.shape()]));
    }
    let mut shape = a.shape()[..a.dims() - 2].to_vec();
    shape.extend([m, n]);
    let c = out(a, &shape)?;
    let d = MatmulDims { batch: ba, m, n, k, trans_a, trans_b };
    a.backend().matmul(a.storage(), b.storage(), c.storage(), &d)?;
    Ok(c)
}

// ---- conv ------------------------------------------------------------------------------------

/// Checks an NHWC input against a [c_out, kh, kw, c_in/groups] weight and returns the dims.
pub fn conv2d_dims(x: &[usize], w: &[usize], stride: [usize; 2], pad: [usize; 2], groups: usize) -> Result<Conv2dDims> {
    const OP: &str = "conv2d";
    if x.len() != 4 || w.len() != 4 {
        return Err(shape_err(OP, "input must be [n, h, w, c] and weight [c_out, kh, kw, c_in/groups]", &[x, w]));
    }
    let (n, h, wd, c_in) = (x[0], x[1], x[2], x[3]);
    let (c_out, kh, kw, cg) = (w[0], w[1], w[2], w[3]);
    if groups == 0 || c_in % groups != 0 || c_out % groups != 0 || cg * groups != c_in {
        return Err(shape_err(OP, format!("channels do not split into {groups} groups"), &[x, w]));
    }
    if stride[0] == 0 || stride[1] == 0 || h + 2 * pad[0] < kh || wd + 2 * pad[1] < kw {
        return Err(shape_err(OP, format!("kernel larger than padded input or zero stride (stride {stride:?}, pad {pad:?})"), &[x, w]));
    }
    let oh = (h + 2 * pad[0] - kh) / stride[0] + 1;
    let ow = (wd + 2 * pad[1] - kw) / stride[1] + 1;
    Ok(Conv2dDims { n, h, w: wd, c_in, c_out, kh, kw, stride, pad, groups, oh, ow })
}

pub fn conv2d<B: Backend>(x: &Tensor<B>, w: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d", &[x, w])?;
    expect_shape("conv2d", "input", x, &[d.n, d.h, d.w, d.c_in])?;
    expect_shape("conv2d", "weight", w, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    let y = out(x, &[d.n, d.oh, d.ow, d.c_out])?;
    x.backend().conv2d_fwd(x.storage(), w.storage(), y.storage(), d)?;
    Ok(y)
}

pub fn conv2d_bwd_data<B: Backend>(dy: &Tensor<B>, w: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d_bwd_data", &[dy, w])?;
    expect_shape("conv2d_bwd_data", "dy", dy, &[d.n, d.oh, d.ow, d.c_out])?;
    expect_shape("conv2d_bwd_data", "weight", w, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    let dx = out(dy, &[d.n, d.h, d.w, d.c_in])?;
    dy.backend().conv2d_bwd_data(dy.storage(), w.storage(), dx.storage(), d)?;
    Ok(dx)
}

pub fn conv2d_bwd_weight<B: Backend>(x: &Tensor<B>, dy: &Tensor<B>, d: &Conv2dDims) -> Result<Tensor<B>> {
    same_dtype("conv2d_bwd_weight", &[x, dy])?;
    expect_shape("conv2d_bwd_weight", "input", x, &[d.n, d.h, d.w, d.c_in])?;
    expect_shape("conv2d_bwd_weight", "dy", dy, &[d.n, d.oh, d.ow, d.c_out])?;
    let dw = out(x, &[d.c_out, d.kh, d.kw, d.c_in / d.groups])?;
    x.backend().conv2d_bwd_weight(x.storage(), dy.storage(), dw.storage(), d)?;
    Ok(dw)
}

// ---- norm ------------------------------------------------------------------------------------

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
    x: &Tensor<B>,
    gamma: Option<&Tensor<B>>,
    beta: Option<&Tensor<B>>,
    running: Option<(&Tensor<B>, &Tensor<B>, f32)>,
    eps: f32,
) -> Result<(Tensor<B>, BnSaved<B>)> {
    batchnorm_train_tail(x, gamma, beta, running, eps, None, false)
}

/// The checks every batch-norm forward makes: x's dims, gamma and beta per channel, and a fused
/// tail's shortcut of x's shape and dtype.
fn bn_dims<B: Backend>(
    op: &'static str,
    x: &Tensor<B>,
    gamma: Option<&Tensor<B>>,
    beta: Option<&Tensor<B>>,
    residual: Option<&Tensor<B>>,
    eps: f32,
) -> Result<NormDims> {
    same_dtype(op, &[x])?;
    if let Some(r) = residual {
        same_dtype(op, &[x, r])?;
        expect_shape(op, "residual", r, x.shape())?;
    }
    let d = norm_dims(op, x, eps)?;
    per_channel(op, "gamma", gamma, d.channels)?;
    per_channel(op, "beta", beta, d.channels)?;
    Ok(d)
}

/// batchnorm_train with its output pass fused with what follows in a ResNet:
/// y = relu?(bn(x) + residual?) (backend::BnTail).
pub fn batchnorm_train_tail<B: Backend>(
    x: &Tensor<B>,
    gamma: Option<&Tensor<B>>,
    beta: Option<&Tensor<B>>,
    running: Option<(&Tensor<B>, &Tensor<B>, f32)>,
    eps: f32,
    residual: Option<&Tensor<B>>,
    relu: bool,
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
        x: &Tensor<B>,
        gamma: Option<&Tensor<B>>,
        beta: Option<&Tensor<B>>,
        running: Option<(&Tensor<B>, &Tensor<B>, f32)>,
        eps: f32,
        residual: Option<&Tensor<B>>,
    ) -> Result<Self> {
        const OP: &str = "batchnorm";
        let d = bn_dims(OP, x, gamma, beta, residual, eps)?;
        if d.rows < 2 {
            return Err(shape_err(OP, "training batch norm needs more than one value per channel", &[x.shape()]));
        }
        if let Some((m, v, _)) = running {
            per_channel(OP, "running_mean", Some(m), d.channels)?;
            per_channel(OP, "running_var", Some(v), d.channels)?;
        }
        Ok(BnTrainOut { y: out(x, x.shape())?, mean: out(x, &[d.channels])?, invstd: out(x, &[d.channels])?, d })
    }

    /// The backend's view: these outputs with the given parameters and tail.
    fn args<'a>(
        &'a self,
        gamma: Option<&'a Tensor<B>>,
        beta: Option<&'a Tensor<B>>,
        running: Option<(&'a Tensor<B>, &'a Tensor<B>, f32)>,
        residual: Option<&'a Tensor<B>>,
        relu: bool,
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
/// backward reads it), y and the saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batchnorm_train<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    cd: &Conv2dDims,
    gamma: Option<&Tensor<B>>,
    beta: Option<&Tensor<B>>,
    running: Option<(&Tensor<B>, &Tensor<B>, f32)>,
    eps: f32,
    residual: Option<&Tensor<B>>,
    relu: bool,
) -> Result<(Tensor<B>, Tensor<B>, BnSaved<B>)> {
    same_dtype("conv2d", &[x, w])?;
    expect_shape("conv2d", "input", x, &[cd.n, cd.h, cd.w, cd.c_in])?;
    expect_shape("conv2d", "weight", w, &[cd.c_out, cd.kh, cd.kw, cd.c_in / cd.groups])?;
    let c = out(x, &[cd.n, cd.oh, cd.ow, cd.c_out])?;
    let t = BnTrainOut::new(&c, gamma, beta, running, eps, residual)?;
    x.backend().conv2d_batchnorm_fwd_train(x.storage(), w.storage(), c.storage(), cd, t.args(gamma, beta, running, residual, relu), &t.d)?;
    Ok((c, t.y, BnSaved { mean: t.mean, invstd: t.invstd }))
}

pub fn batchnorm_eval<B: Backend>(
    x: &Tensor<B>,
    gamma: Option<&Tensor<B>>,
    beta: Option<&Tensor<B>>,
    running_mean: &Tensor<B>,
    running_var: &Tensor<B>,
    eps: f32,
) -> Result<Tensor<B>> {
    batchnorm_eval_tail(x, gamma, beta, running_mean, running_var, eps, None, false)
}

/// batchnorm_eval with a fused tail, as batchnorm_train_tail.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval_tail<B: Backend>(
    x: &Tensor<B>,
    gamma: Option<&Tensor<B>>,
    beta: Option<&Tensor<B>>,
    running_mean: &Tensor<B>,
    running_var: &Tensor<B>,
    eps: f32,
    residual: Option<&Tensor<B>>,
    relu: bool,
) -> Result<Tensor<B>> {
    const OP: &str = "batchnorm_eval";
    same_dtype(OP, &[x, running_mean, running_var])?;
    let d = bn_dims(OP, x, gamma, beta, residual, eps)?;
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
    x: &Tensor<B>,
    dy: &Tensor<B>,
    gamma: Option<&Tensor<B>>,
    saved: &BnSaved<B>,
    affine: bool,
) -> Result<(Tensor<B>, Option<(Tensor<B>, Tensor<B>)>)> {
    let (dx, dgb, _) = batchnorm_bwd_tail(x, dy, None, gamma, saved, affine, false)?;
    Ok((dx, dgb))
}

/// Gradients of a batch norm (train mode) with a fused tail: `relu_out` is the forward output
/// when the tail ended in a ReLU. Returns dx, (dgamma, dbeta) when `affine`, and the residual's
/// gradient when `residual` (dy masked by the ReLU; dy itself without one).
pub fn batchnorm_bwd_tail<B: Backend>(
    x: &Tensor<B>,
    dy: &Tensor<B>,
    relu_out: Option<&Tensor<B>>,
    gamma: Option<&Tensor<B>>,
    saved: &BnSaved<B>,
    affine: bool,
    residual: bool,
) -> Result<BnGrads<B>> {
    const OP: &str = "batchnorm_bwd";
    same_dtype(OP, &[x, dy])?;
    expect_shape(OP, "dy", dy, x.shape())?;
    if let Some(y) = relu_out {
        expect_shape(OP, "relu_out", y, x.shape())?;
    }
    let d = norm_dims(OP, x, 0.0)?;
    let dx = out(x, x.shape())?;
    let dgb = if affine { Some((out(x, &[d.channels])?, out(x, &[d.channels])?)) } else { None };
    let dres = if residual && relu_out.is_some() { Some(out(x, x.shape())?) } else { None };
    x.backend().batchnorm_bwd(
        x.storage(),
        dy.storage(),
        relu_out.map(|t| t.storage()),
        gamma.map(|t| t.storage()),
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
    x: &Tensor<B>,
    dy: &Tensor<B>,
    gamma: &Tensor<B>,
    saved: &BnSaved<B>,
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

// ---- attention -------------------------------------------------------------------------------

fn attn_dims<B: Backend>(q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>, scale: f32) -> Result<AttnDims> {
    const OP: &str = "attention";
    same_dtype(OP, &[q, k, v])?;
    let (bq, tq, dq) = split_matrix(OP, q.shape())?;
    let (bk, tk, dk) = split_matrix(OP, k.shape())?;
    if k.shape() != v.shape() || bq != bk || dq != dk || q.shape()[..q.dims() - 2] != k.shape()[..k.dims() - 2] {
        return Err(shape_err(OP, "q [.., tq, d], k and v [.., tk, d] must agree", &[q.shape(), k.shape(), v.shape()]));
    }
    // A softmax over no keys is 0 / 0: refused here rather than returned as NaN.
    if tk == 0 && tq > 0 {
        return Err(shape_err(OP, "no keys (tk = 0): every query's softmax would be empty", &[q.shape(), k.shape()]));
    }
    Ok(AttnDims { bh: bq, tq, tk, d: dq, scale })
}

/// softmax(scale q k^T) v over every leading (batch, head) slice; also returns the row log-sum-exp.
pub fn attention<B: Backend>(q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>, scale: f32) -> Result<(Tensor<B>, Tensor<B>)> {
    let d = attn_dims(q, k, v, scale)?;
    let o = out(q, q.shape())?;
    let lse = out(q, &q.shape()[..q.dims() - 1])?;
    q.backend().attention_fwd(q.storage(), k.storage(), v.storage(), o.storage(), lse.storage(), &d)?;
    Ok((o, lse))
}

/// Returns (dq, dk, dv).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    o: &Tensor<B>,
    lse: &Tensor<B>,
    dout: &Tensor<B>,
    scale: f32,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let d = attn_dims(q, k, v, scale)?;
    expect_shape("attention_bwd", "dout", dout, q.shape())?;
    let (dq, dk, dv) = (out(q, q.shape())?, out(k, k.shape())?, out(v, v.shape())?);
    q.backend().attention_bwd(
        q.storage(),
        k.storage(),
        v.storage(),
        o.storage(),
        lse.storage(),
        dout.storage(),
        dq.storage(),
        dk.storage(),
        dv.storage(),
        &d,
    )?;
    Ok((dq, dk, dv))
}

// ---- elementwise -----------------------------------------------------------------------------

pub fn unary<B: Backend>(op: Unary, x: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("unary", &[x])?;
    let y = out(x, x.shape())?;
    x.backend().unary_fwd(op, x.storage(), y.storage(), x.numel())?;
    Ok(y)
}

pub fn unary_bwd<B: Backend>(op: Unary, x: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("unary_bwd", &[x, dy])?;
    expect_shape("unary_bwd", "dy", dy, x.shape())?;
    let dx = out(x, x.shape())?;
    x.backend().unary_bwd(op, x.storage(), dy.storage(), dx.storage(), x.numel())?;
    Ok(dx)
}

/// a op b, where b's shape must be a suffix of a's (b repeats over a's leading axes).
pub fn binary<B: Backend>(op: Binary, a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    const OP: &str = "binary";
    same_dtype(OP, &[a, b])?;
    if b.dims() > a.dims() || a.shape()[a.dims() - b.dims()..] != *b.shape() || (b.numel() == 0 && a.numel() != 0) {
        return Err(shape_err(OP, format!("{op:?}: the second shape must be a suffix of the first"), &[a.shape(), b.shape()]));
    }
    let c = out(a, a.shape())?;
    a.backend().binary(op, a.storage(), b.storage(), c.storage(), a.numel(), b.numel())?;
    Ok(c)
}

pub fn add<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Add, a, b)
}

pub fn mul<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Mul, a, b)
}

pub fn sub<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Sub, a, b)
}

pub fn div<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    binary(Binary::Div, a, b)
}

pub fn scale<B: Backend>(x: &Tensor<B>, alpha: f32) -> Result<Tensor<B>> {
    same_dtype("scale", &[x])?;
    let y = out(x, x.shape())?;
    x.backend().scale(x.storage(), y.storage(), alpha, x.numel())?;
    Ok(y)
}

/// Sum over one axis; the axis is removed from the shape.
/// x [n, h, w, c] scaled by s [n, c] per sample and channel (squeeze-excitation's gate).
pub fn channel_scale<B: Backend>(x: &Tensor<B>, s: &Tensor<B>) -> Result<Tensor<B>> {
    let d = channel_scale_dims("channel_scale", x, s)?;
    let y = out(x, x.shape())?;
    x.backend().channel_scale(x.storage(), s.storage(), y.storage(), &d)?;
    Ok(y)
}

/// (dx, ds) of channel_scale: dx = dy s, ds[n, c] = sum over h w of dy x.
pub fn channel_scale_bwd<B: Backend>(x: &Tensor<B>, s: &Tensor<B>, dy: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
    let d = channel_scale_dims("channel_scale_bwd", x, s)?;
    expect_shape("channel_scale_bwd", "dy", dy, x.shape())?;
    let dx = channel_scale(dy, s)?;
    let ds = sum_axis(&mul(dy, x)?.reshape(&[d.outer, d.axis, d.inner])?, 1)?;
    Ok((dx, ds))
}

fn channel_scale_dims<B: Backend>(op: &'static str, x: &Tensor<B>, s: &Tensor<B>) -> Result<AxisDims> {
    same_dtype(op, &[x, s])?;
    let xs = x.shape();
    if xs.len() < 2 || s.shape() != [xs[0], xs[xs.len() - 1]] {
        return Err(shape_err(op, "needs x [n, .., c] and s [n, c]", &[xs, s.shape()]));
    }
    Ok(AxisDims { outer: xs[0], axis: numel(&xs[1..xs.len() - 1]), inner: xs[xs.len() - 1] })
}

pub fn sum_axis<B: Backend>(x: &Tensor<B>, axis: usize) -> Result<Tensor<B>> {
    same_dtype("sum_axis", &[x])?;
    if axis >= x.dims() {
        return Err(shape_err("sum_axis", format!("axis {axis} out of range"), &[x.shape()]));
    }
    let s = x.shape();
    let d = AxisDims { outer: numel(&s[..axis]), axis: s[axis], inner: numel(&s[axis + 1..]) };
    let mut shape = s.to_vec();
    shape.remove(axis);
    let y = out(x, &shape)?;
    x.backend().sum_axis(x.storage(), y.storage(), &d)?;
    Ok(y)
}

/// Sums the leading axes away so the result has shape `suffix` (the gradient of a broadcast).
pub fn sum_to_suffix<B: Backend>(x: &Tensor<B>, suffix: &[usize]) -> Result<Tensor<B>> {
    let lead = x.dims().checked_sub(suffix.len()).filter(|&l| x.shape()[l..] == *suffix);
    let Some(lead) = lead else {
        return Err(shape_err("sum_to_suffix", "target is not a suffix", &[x.shape(), suffix]));
    };
    let flat = x.reshape(&[numel(&x.shape()[..lead]), numel(suffix)])?;
    sum_axis(&flat, 0)?.reshape(suffix)
}

/// Mean over all elements, as a one-element tensor.
pub fn mean_all<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    let s = sum_axis(&x.reshape(&[x.numel()])?, 0)?;
    scale(&s.reshape(&[1])?, 1.0 / x.numel().max(1) as f32)
}

// ---- pooling ---------------------------------------------------------------------------------

pub fn pool_dims(x: &[usize], k: usize, stride: usize, pad: usize) -> Result<PoolDims> {
    if x.len() != 4 || k == 0 || stride == 0 || pad * 2 > k || x[1] + 2 * pad < k || x[2] + 2 * pad < k {
        return Err(shape_err(
            "maxpool2d",
            format!("needs [n, h, w, c], kernel {k} stride {stride} pad {pad} (pad at most half the kernel)"),
            &[x],
        ));
    }
    let oh = (x[1] + 2 * pad - k) / stride + 1;
    let ow = (x[2] + 2 * pad - k) / stride + 1;
    Ok(PoolDims { n: x[0], h: x[1], w: x[2], c: x[3], k, stride, pad, oh, ow })
}

pub fn maxpool2d<B: Backend>(x: &Tensor<B>, d: &PoolDims) -> Result<Tensor<B>> {
    same_dtype("maxpool2d", &[x])?;
    expect_shape("maxpool2d", "input", x, &[d.n, d.h, d.w, d.c])?;
    let y = out(x, &[d.n, d.oh, d.ow, d.c])?;
    x.backend().maxpool2d_fwd(x.storage(), y.storage(), d)?;
    Ok(y)
}

pub fn maxpool2d_bwd<B: Backend>(x: &Tensor<B>, dy: &Tensor<B>, d: &PoolDims) -> Result<Tensor<B>> {
    same_dtype("maxpool2d_bwd", &[x, dy])?;
    expect_shape("maxpool2d_bwd", "dy", dy, &[d.n, d.oh, d.ow, d.c])?;
    let dx = out(x, x.shape())?;
    x.backend().maxpool2d_bwd(x.storage(), dy.storage(), dx.storage(), d)?;
    Ok(dx)
}

/// [n, h, w, c] -> [n, c]
pub fn avgpool_global<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    same_dtype("avgpool_global", &[x])?;
    let s = x.shape();
    if s.len() != 4 || s[1] * s[2] == 0 {
        return Err(shape_err("avgpool_global", "needs a non-empty [n, h, w, c]", &[s]));
    }
    let d = AxisDims { outer: s[0], axis: s[1] * s[2], inner: s[3] };
    let y = out(x, &[s[0], s[3]])?;
    x.backend().avgpool_global_fwd(x.storage(), y.storage(), &d)?;
    Ok(y)
}

pub fn avgpool_global_bwd<B: Backend>(dy: &Tensor<B>, x_shape: &[usize]) -> Result<Tensor<B>> {
    same_dtype("avgpool_global_bwd", &[dy])?;
    expect_shape("avgpool_global_bwd", "dy", dy, &[x_shape[0], x_shape[3]])?;
    let d = AxisDims { outer: x_shape[0], axis: x_shape[1] * x_shape[2], inner: x_shape[3] };
    let dx = out(dy, x_shape)?;
    dy.backend().avgpool_global_bwd(dy.storage(), dx.storage(), &d)?;
    Ok(dx)
}

// ---- losses ----------------------------------------------------------------------------------

fn loss_rows<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>, b_is_labels: bool) -> Result<(usize, usize)> {
    same_dtype(op, &[a, b])?;
    let ok = a.dims() == 2 && a.shape()[0] > 0 && if b_is_labels { b.shape() == [a.shape()[0]] } else { a.shape() == b.shape() };
    if !ok {
        let want = if b_is_labels { "logits [rows, classes] and labels [rows]" } else { "two [rows, dim] tensors of one shape" };
        return Err(shape_err(op, format!("needs {want}"), &[a.shape(), b.shape()]));
    }
    Ok((a.shape()[0], a.shape()[1]))
}

fn scalar_grad<B: Backend>(op: &'static str, g: &Tensor<B>) -> Result<()> {
    if g.numel() != 1 {
        return Err(shape_err(op, "upstream gradient of a loss must have one element", &[g.shape()]));
    }
    Ok(())
}

/// Mean cross-entropy; labels are class indices stored as floats, shape [rows].
pub fn cross_entropy<B: Backend>(logits: &Tensor<B>, labels: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("cross_entropy", logits, labels, true)?;
    let loss = out(logits, &[1])?;
    logits.backend().cross_entropy_fwd(logits.storage(), labels.storage(), loss.storage(), rows, classes)?;
    Ok(loss)
}

pub fn cross_entropy_bwd<B: Backend>(logits: &Tensor<B>, labels: &Tensor<B>, dloss: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("cross_entropy_bwd", logits, labels, true)?;
    scalar_grad("cross_entropy_bwd", dloss)?;
    let dx = out(logits, logits.shape())?;
    logits.backend().cross_entropy_bwd(logits.storage(), labels.storage(), dloss.storage(), dx.storage(), rows, classes)?;
    Ok(dx)
}

/// -mean_i cos(p_i, z_i), with F.normalize's eps clamp on each norm.
pub fn cosine_loss<B: Backend>(p: &Tensor<B>, z: &Tensor<B>, eps: f32) -> Result<Tensor<B>> {
    let (rows, dim) = loss_rows("cosine_loss", p, z, false)?;
    let loss = out(p, &[1])?;
    p.backend().cosine_loss_fwd(p.storage(), z.storage(), loss.storage(), rows, dim, eps)?;
    Ok(loss)
}

/// Returns dp and, when `want_dz`, dz.
pub fn cosine_loss_bwd<B: Backend>(
    p: &Tensor<B>,
    z: &Tensor<B>,
    dloss: &Tensor<B>,
    eps: f32,
    want_dz: bool,
) -> Result<(Tensor<B>, Option<Tensor<B>>)> {
    let (rows, dim) = loss_rows("cosine_loss_bwd", p, z, false)?;
    scalar_grad("cosine_loss_bwd", dloss)?;
    let dp = out(p, p.shape())?;
    let dz = if want_dz { Some(out(z, z.shape())?) } else { None };
    p.backend().cosine_loss_bwd(
        p.storage(),
        z.storage(),
        dloss.storage(),
        dp.storage(),
        dz.as_ref().map(|t| t.storage()),
        rows,
        dim,
        eps,
    )?;
    Ok((dp, dz))
}

/// Mean cross-entropy of logits [rows, classes] against soft targets q of the same shape.
pub fn soft_cross_entropy<B: Backend>(logits: &Tensor<B>, q: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("soft_cross_entropy", logits, q, false)?;
    let loss = out(logits, &[1])?;
    logits.backend().soft_cross_entropy_fwd(logits.storage(), q.storage(), loss.storage(), rows, classes)?;
    Ok(loss)
}

pub fn soft_cross_entropy_bwd<B: Backend>(logits: &Tensor<B>, q: &Tensor<B>, dloss: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("soft_cross_entropy_bwd", logits, q, false)?;
    scalar_grad("soft_cross_entropy_bwd", dloss)?;
    let dx = out(logits, logits.shape())?;
    logits.backend().soft_cross_entropy_bwd(logits.storage(), q.storage(), dloss.storage(), dx.storage(), rows, classes)?;
    Ok(dx)
}

fn nt_xent_rows<B: Backend>(op: &'static str, sim: &Tensor<B>, groups: &Tensor<B>, temperature: f32) -> Result<usize> {
    same_dtype(op, &[sim, groups])?;
    let rows = sim.shape().first().copied().unwrap_or(0);
    if sim.shape() != [rows, rows] || rows == 0 || groups.shape() != [rows] {
        return Err(shape_err(op, "needs similarities [rows, rows] and groups [rows]", &[sim.shape(), groups.shape()]));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(crate::error::Error::Invalid { op, msg: format!("temperature must be a positive number (got {temperature})") });
    }
    Ok(rows)
}

/// NT-Xent over similarities sim [rows, rows] whose rows carry `groups` [rows] (ids as floats):
/// mean_r [lse_{j != r}(sim_rj / T) - lse_{j != r, g_j = g_r}(sim_rj / T)]. SimCLR's groups
/// are the image of each view; SupCon's are the labels.
pub fn nt_xent<B: Backend>(sim: &Tensor<B>, groups: &Tensor<B>, temperature: f32) -> Result<Tensor<B>> {
    let rows = nt_xent_rows("nt_xent", sim, groups, temperature)?;
    let loss = out(sim, &[1])?;
    sim.backend().nt_xent_fwd(sim.storage(), groups.storage(), loss.storage(), rows, temperature)?;
    Ok(loss)
}

pub fn nt_xent_bwd<B: Backend>(sim: &Tensor<B>, groups: &Tensor<B>, dloss: &Tensor<B>, temperature: f32) -> Result<Tensor<B>> {
    let rows = nt_xent_rows("nt_xent_bwd", sim, groups, temperature)?;
    scalar_grad("nt_xent_bwd", dloss)?;
    let dsim = out(sim, sim.shape())?;
    sim.backend().nt_xent_bwd(sim.storage(), groups.storage(), dloss.storage(), dsim.storage(), rows, temperature)?;
    Ok(dsim)
}

fn square_side<B: Backend>(op: &'static str, c: &Tensor<B>) -> Result<usize> {
    same_dtype(op, &[c])?;
    match c.shape() {
        [a, b] if a == b => Ok(*a),
        s => Err(shape_err(op, "needs a square matrix [d, d]", &[s])),
    }
}

/// diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2 of c [d, d]: Barlow Twins'
/// loss on its cross-correlation, VICReg's covariance term (diag_weight 0).
pub fn identity_penalty<B: Backend>(c: &Tensor<B>, diag_weight: f32, off_weight: f32) -> Result<Tensor<B>> {
    let d = square_side("identity_penalty", c)?;
    let loss = out(c, &[1])?;
    c.backend().identity_penalty_fwd(c.storage(), loss.storage(), d, diag_weight, off_weight)?;
    Ok(loss)
}

pub fn identity_penalty_bwd<B: Backend>(c: &Tensor<B>, dloss: &Tensor<B>, diag_weight: f32, off_weight: f32) -> Result<Tensor<B>> {
    let d = square_side("identity_penalty_bwd", c)?;
    scalar_grad("identity_penalty_bwd", dloss)?;
    let dc = out(c, c.shape())?;
    c.backend().identity_penalty_bwd(c.storage(), dloss.storage(), dc.storage(), d, diag_weight, off_weight)?;
    Ok(dc)
}

/// ||t||, reduced on the backend: only the sum of squares comes back, not the tensor.
pub fn l2_norm<B: Backend>(t: &Tensor<B>) -> Result<f64> {
    let sq = sum_axis(&mul(t, t)?.reshape(&[t.numel()])?, 0)?;
    Ok((sq.scalar()? as f64).sqrt())
}

// ---- optimiser -------------------------------------------------------------------------------

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

// ---- layout ----------------------------------------------------------------------------------

pub fn permute<B: Backend>(x: &Tensor<B>, perm: &[usize]) -> Result<Tensor<B>> {
    same_dtype("permute", &[x])?;
    let mut seen = vec![false; x.dims()];
    if perm.len() != x.dims() || perm.iter().any(|&p| p >= x.dims() || std::mem::replace(&mut seen[p], true)) {
        return Err(shape_err("permute", format!("{perm:?} is not a permutation of the axes"), &[x.shape()]));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let y = out(x, &shape)?;
    if x.numel() > 0 {
        x.backend().permute(x.storage(), y.storage(), x.shape(), perm)?;
    }
    Ok(y)
}

/// The inverse permutation (for the gradient of a permute).
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

fn slice_dims(op: &'static str, shape: &[usize], axis: usize, start: usize, len: usize) -> Result<SliceDims> {
    if axis >= shape.len() || start + len > shape[axis] {
        return Err(shape_err(op, format!("range {start}..{} on axis {axis} out of bounds", start + len), &[shape]));
    }
    Ok(SliceDims { outer: numel(&shape[..axis]), axis: shape[axis], start, len, inner: numel(&shape[axis + 1..]) })
}

/// x[.., start..start+len, ..] along `axis`.
pub fn slice<B: Backend>(x: &Tensor<B>, axis: usize, start: usize, len: usize) -> Result<Tensor<B>> {
    same_dtype("slice", &[x])?;
    let d = slice_dims("slice", x.shape(), axis, start, len)?;
    let mut shape = x.shape().to_vec();
    shape[axis] = len;
    let y = out(x, &shape)?;
    x.backend().slice(x.storage(), y.storage(), &d)?;
    Ok(y)
}

/// Writes `src` into `dst[.., start..start+len, ..]` in place.
pub fn slice_assign<B: Backend>(dst: &Tensor<B>, src: &Tensor<B>, axis: usize, start: usize) -> Result<()> {
    same_dtype("slice_assign", &[dst, src])?;
    let len = src.shape().get(axis).copied().unwrap_or(0);
    let d = slice_dims("slice_assign", dst.shape(), axis, start, len)?;
    let mut want = dst.shape().to_vec();
    want[axis] = len;
    expect_shape("slice_assign", "source", src, &want)?;
    if dst.same_storage(src) {
        return Err(Error::Invalid { op: "slice_assign", msg: "source and destination share a buffer".into() });
    }
    dst.backend().slice_assign(src.storage(), dst.storage(), &d)
}

/// Concatenation along `axis`; all other dims must agree.
pub fn concat<B: Backend>(xs: &[&Tensor<B>], axis: usize) -> Result<Tensor<B>> {
    let Some(first) = xs.first() else {
        return Err(Error::Invalid { op: "concat", msg: "no tensors given".into() });
    };
    same_dtype("concat", xs)?;
    let mut shape = first.shape().to_vec();
    let shapes: Vec<&[usize]> = xs.iter().map(|t| t.shape()).collect();
    let ok =
        axis < shape.len() && xs.iter().all(|t| t.dims() == shape.len() && (0..shape.len()).all(|a| a == axis || t.shape()[a] == shape[a]));
    if !ok {
        return Err(shape_err("concat", format!("shapes disagree off axis {axis}"), &shapes));
    }
    shape[axis] = xs.iter().map(|t| t.shape()[axis]).sum();
    let y = out(first, &shape)?;
    let mut start = 0;
    for t in xs {
        slice_assign(&y, t, axis, start)?;
        start += t.shape()[axis];
    }
    Ok(y)
}
