//! Forward ops on the tape: each computes its value through `ops` and records what its
//! gradient rule (in `rules.rs`) needs.

use super::{Op, Tape, Var};
use crate::backend::{Backend, PoolDims, Precision, Unary};
use crate::error::Result;
use crate::ops;

impl<B: Backend> Tape<B> {
    /// A rounding point of `Precision::Bf16` (the backend's): `x` rounded to bfloat16, recorded,
    /// so the gradient through it is rounded too. Under FP32, `x` itself. Convolutions, matmuls
    /// and attention put one on each operand and on their result, as bf16 autocast does: the
    /// product accumulates in FP32 between them.
    fn bf16_point(&self, x: &Var<B>) -> Result<Var<B>> {
        match x.value.backend().precision() {
            Precision::Bf16 => self.unary(Unary::RoundBf16, x),
            Precision::Fp32 => Ok(x.clone()),
        }
    }

    /// Whether a matmul's or convolution's bf16 rounding is a pass of its own on this backend:
    /// precision bf16, and kernels that do not round their operands and results themselves
    /// (`Backend::rounds_gemm_to_bf16`).
    fn gemm_rounds_in_passes(b: &B) -> bool {
        b.precision() == Precision::Bf16 && !b.rounds_gemm_to_bf16()
    }

    /// `bf16_point` for a matmul or convolution: the rounding pass where
    /// `gemm_rounds_in_passes`, nothing otherwise.
    fn gemm_bf16_point(&self, x: &Var<B>) -> Result<Var<B>> {
        if Self::gemm_rounds_in_passes(x.value.backend()) { self.unary(Unary::RoundBf16, x) } else { Ok(x.clone()) }
    }

    pub fn matmul(&self, a: &Var<B>, b: &Var<B>, trans_a: bool, trans_b: bool) -> Result<Var<B>> {
        let (a, b) = (&self.gemm_bf16_point(a)?, &self.gemm_bf16_point(b)?);
        let y = ops::matmul(&a.value, &b.value, trans_a, trans_b)?;
        self.gemm_bf16_point(&self.record(y, &[a, b], || Op::Matmul { a: a.value.clone(), b: b.value.clone(), trans_a, trans_b }))
    }

    /// NHWC conv; weight [c_out, kh, kw, c_in/groups].
    pub fn conv2d(&self, x: &Var<B>, w: &Var<B>, stride: [usize; 2], pad: [usize; 2], groups: usize) -> Result<Var<B>> {
        let dims = ops::conv2d_dims(x.shape(), w.shape(), stride, pad, groups)?;
        let (x, w) = (&self.gemm_bf16_point(x)?, &self.gemm_bf16_point(w)?);
        let y = ops::conv2d(&x.value, &w.value, &dims)?;
        self.gemm_bf16_point(&self.record(y, &[x, w], || Op::Conv2d { x: x.value.clone(), w: w.value.clone(), dims }))
    }

    /// Training-mode batch norm over all axes but the last; `affine` = Some((gamma, beta)).
    /// `running` = (mean, var, momentum) is updated in place.
    pub fn batchnorm_train(
        &self, x: &Var<B>, affine: Option<(&Var<B>, &Var<B>)>, running: Option<(&crate::Tensor<B>, &crate::Tensor<B>, f32)>, eps: f32,
    ) -> Result<Var<B>> {
        self.batchnorm_train_tail(x, affine, running, eps, None, false)
    }

    /// batchnorm_train with the output pass fused with what follows it in a ResNet:
    /// relu?(bn(x) + residual?), one op on the tape (inputs x, then gamma and beta, then the
    /// residual). Its values and gradients are those of the three separate ops.
    pub fn batchnorm_train_tail(
        &self, x: &Var<B>, affine: Option<(&Var<B>, &Var<B>)>, running: Option<(&crate::Tensor<B>, &crate::Tensor<B>, f32)>, eps: f32,
        residual: Option<&Var<B>>, relu: bool,
    ) -> Result<Var<B>> {
        let (g, b) = (affine.map(|a| &a.0.value), affine.map(|a| &a.1.value));
        let (y, saved) = ops::batchnorm_train_tail(&x.value, g, b, running, eps, residual.map(|r| &r.value), relu)?;
        Ok(self.record_batchnorm(x, y, saved, affine, residual, relu))
    }

    /// The batch-norm node of a forward already run: inputs x, gamma and beta, the residual.
    fn record_batchnorm(
        &self, x: &Var<B>, y: crate::Tensor<B>, saved: ops::BnSaved<B>, affine: Option<(&Var<B>, &Var<B>)>, residual: Option<&Var<B>>,
        relu: bool,
    ) -> Var<B> {
        let mut inputs = vec![x];
        if let Some((g, b)) = affine {
            inputs.extend([g, b]);
        }
        inputs.extend(residual);
        let op = || Op::BatchNorm {
            x: x.value.clone(),
            gamma: affine.map(|a| a.0.value.clone()),
            beta: affine.map(|a| a.1.value.clone()),
            saved,
            relu_out: relu.then(|| y.clone()),
            residual: residual.is_some(),
        };
        self.record(y.clone(), &inputs, op)
    }

    /// conv2d (bias-free) then batchnorm_train_tail, run as one backend call
    /// (conv2d_batchnorm_fwd_train: CUDA sums the statistics in the convolution's epilogue) and
    /// recorded as the two ops it is, so both gradient rules serve unchanged. Where the bf16
    /// rounding of a convolution is a pass of its own (CPU and WebGPU at precision bf16), the
    /// two run as the separate ops.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_batchnorm_train(
        &self, x: &Var<B>, w: &Var<B>, stride: [usize; 2], pad: [usize; 2], groups: usize, affine: Option<(&Var<B>, &Var<B>)>,
        running: Option<(&crate::Tensor<B>, &crate::Tensor<B>, f32)>, eps: f32, residual: Option<&Var<B>>, relu: bool,
    ) -> Result<Var<B>> {
        if Self::gemm_rounds_in_passes(x.value.backend()) {
            let c = self.conv2d(x, w, stride, pad, groups)?;
            return self.batchnorm_train_tail(&c, affine, running, eps, residual, relu);
        }
        let dims = ops::conv2d_dims(x.shape(), w.shape(), stride, pad, groups)?;
        let (g, b) = (affine.map(|a| &a.0.value), affine.map(|a| &a.1.value));
        let (c, y, saved) = ops::conv2d_batchnorm_train(&x.value, &w.value, &dims, g, b, running, eps, residual.map(|r| &r.value), relu)?;
        let c = self.record(c, &[x, w], || Op::Conv2d { x: x.value.clone(), w: w.value.clone(), dims });
        Ok(self.record_batchnorm(&c, y, saved, affine, residual, relu))
    }

    pub fn layernorm(&self, x: &Var<B>, gamma: &Var<B>, beta: &Var<B>, eps: f32) -> Result<Var<B>> {
        let (y, saved) = ops::layernorm(&x.value, &gamma.value, &beta.value, eps)?;
        Ok(self.record(y, &[x, gamma, beta], || Op::LayerNorm { x: x.value.clone(), gamma: gamma.value.clone(), saved }))
    }

    /// x / max(|x|, eps) per row of the last axis (F.normalize).
    pub fn l2_normalize(&self, x: &Var<B>, eps: f32) -> Result<Var<B>> {
        let (y, norm) = ops::l2_normalize(&x.value, eps)?;
        Ok(self.record(y, &[x], || Op::L2Normalize { x: x.value.clone(), norm, eps }))
    }

    pub fn softmax(&self, x: &Var<B>) -> Result<Var<B>> {
        let y = ops::softmax(&x.value)?;
        let saved = y.clone();
        Ok(self.record(y, &[x], || Op::Softmax { y: saved }))
    }

    /// log sum exp over the last axis: [.., c] -> [..].
    pub fn logsumexp(&self, x: &Var<B>) -> Result<Var<B>> {
        let lse = ops::logsumexp(&x.value)?;
        let saved = lse.clone();
        Ok(self.record(lse, &[x], || Op::LogSumExp { x: x.value.clone(), lse: saved }))
    }

    /// Softmax and its log-sum-exp stay FP32 under `Precision::Bf16`; q, k, v and the output are
    /// rounding points.
    pub fn attention(&self, q: &Var<B>, k: &Var<B>, v: &Var<B>, scale: f32) -> Result<Var<B>> {
        let (q, k, v) = (&self.bf16_point(q)?, &self.bf16_point(k)?, &self.bf16_point(v)?);
        let (o, lse) = ops::attention(&q.value, &k.value, &v.value, scale)?;
        let saved_o = o.clone();
        self.bf16_point(&self.record(o, &[q, k, v], || Op::Attention {
            q: q.value.clone(),
            k: k.value.clone(),
            v: v.value.clone(),
            o: saved_o,
            lse,
            scale,
        }))
    }

    pub fn unary(&self, op: Unary, x: &Var<B>) -> Result<Var<B>> {
        let y = ops::unary(op, &x.value)?;
        Ok(self.record(y, &[x], || Op::Unary { op, x: x.value.clone() }))
    }
    /// x [n, .., c] scaled by s [n, c] per sample and channel (squeeze-excitation's gate).
    pub fn channel_scale(&self, x: &Var<B>, s: &Var<B>) -> Result<Var<B>> {
        let y = ops::channel_scale(&x.value, &s.value)?;
        Ok(self.record(y, &[x, s], || Op::ChannelScale { x: x.value.clone(), s: s.value.clone() }))
    }

    /// y = f(a, b) for a broadcasting elementwise op (b's shape a suffix of a's), recorded as `op`.
    fn broadcast_binary(
        &self, a: &Var<B>, b: &Var<B>, f: fn(&crate::Tensor<B>, &crate::Tensor<B>) -> Result<crate::Tensor<B>>, op: impl FnOnce() -> Op<B>,
    ) -> Result<Var<B>> {
        let y = f(&a.value, &b.value)?;
        Ok(self.record(y, &[a, b], op))
    }
    /// a + b, b's shape a suffix of a's.
    pub fn add(&self, a: &Var<B>, b: &Var<B>) -> Result<Var<B>> {
        self.broadcast_binary(a, b, ops::add, || Op::Add { b_shape: b.shape().to_vec() })
    }
    /// a * b, b's shape a suffix of a's.
    pub fn mul(&self, a: &Var<B>, b: &Var<B>) -> Result<Var<B>> {
        self.broadcast_binary(a, b, ops::mul, || Op::Mul { a: a.value.clone(), b: b.value.clone() })
    }
    /// a - b, b's shape a suffix of a's.
    pub fn sub(&self, a: &Var<B>, b: &Var<B>) -> Result<Var<B>> {
        self.broadcast_binary(a, b, ops::sub, || Op::Sub { b_shape: b.shape().to_vec() })
    }
    /// a / b, b's shape a suffix of a's.
    pub fn div(&self, a: &Var<B>, b: &Var<B>) -> Result<Var<B>> {
        let y = ops::div(&a.value, &b.value)?;
        let saved = y.clone();
        Ok(self.record(y, &[a, b], || Op::Div { out: saved, b: b.value.clone() }))
    }
    pub fn scale(&self, x: &Var<B>, alpha: f32) -> Result<Var<B>> {
        let y = ops::scale(&x.value, alpha)?;
        Ok(self.record(y, &[x], || Op::Scale { alpha }))
    }
    pub fn sum_axis(&self, x: &Var<B>, axis: usize) -> Result<Var<B>> {
        let y = ops::sum_axis(&x.value, axis)?;
        Ok(self.record(y, &[x], || Op::SumAxis { in_shape: x.shape().to_vec(), axis }))
    }
    pub fn mean_axis(&self, x: &Var<B>, axis: usize) -> Result<Var<B>> {
        let n = x.shape().get(axis).copied().unwrap_or(1).max(1);
        let s = self.sum_axis(x, axis)?;
        self.scale(&s, 1.0 / n as f32)
    }

    pub fn maxpool2d(&self, x: &Var<B>, k: usize, stride: usize, pad: usize) -> Result<Var<B>> {
        let dims: PoolDims = ops::pool_dims(x.shape(), k, stride, pad)?;
        let y = ops::maxpool2d(&x.value, &dims)?;
        Ok(self.record(y, &[x], || Op::MaxPool { x: x.value.clone(), dims }))
    }
    /// [n, h, w, c] -> [n, c]
    pub fn avgpool_global(&self, x: &Var<B>) -> Result<Var<B>> {
        let y = ops::avgpool_global(&x.value)?;
        Ok(self.record(y, &[x], || Op::GlobalAvgPool { in_shape: x.shape().to_vec() }))
    }

    /// Mean cross-entropy; `labels` [rows] holds class indices as floats.
    pub fn cross_entropy(&self, logits: &Var<B>, labels: &crate::Tensor<B>) -> Result<Var<B>> {
        let y = ops::cross_entropy(&logits.value, labels)?;
        Ok(self.record(y, &[logits], || Op::CrossEntropy { logits: logits.value.clone(), labels: labels.clone() }))
    }
    /// -mean cos(p, z). Pass `z.detach()` for SimSiam's stop-gradient.
    pub fn cosine_loss(&self, p: &Var<B>, z: &Var<B>, eps: f32) -> Result<Var<B>> {
        let y = ops::cosine_loss(&p.value, &z.value, eps)?;
        Ok(self.record(y, &[p, z], || Op::CosineLoss { p: p.value.clone(), z: z.value.clone(), eps }))
    }

    /// Mean cross-entropy against soft targets `q` [rows, classes] (constants).
    pub fn soft_cross_entropy(&self, logits: &Var<B>, q: &crate::Tensor<B>) -> Result<Var<B>> {
        let y = ops::soft_cross_entropy(&logits.value, q)?;
        Ok(self.record(y, &[logits], || Op::SoftCrossEntropy { logits: logits.value.clone(), q: q.clone() }))
    }
    /// NT-Xent over similarities [rows, rows]; `groups` [rows] says which rows are positives.
    pub fn nt_xent(&self, sim: &Var<B>, groups: &crate::Tensor<B>, temperature: f32) -> Result<Var<B>> {
        let y = ops::nt_xent(&sim.value, groups, temperature)?;
        Ok(self.record(y, &[sim], || Op::NtXent { sim: sim.value.clone(), groups: groups.clone(), temperature }))
    }
    /// diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2.
    pub fn identity_penalty(&self, c: &Var<B>, diag_weight: f32, off_weight: f32) -> Result<Var<B>> {
        let y = ops::identity_penalty(&c.value, diag_weight, off_weight)?;
        Ok(self.record(y, &[c], || Op::IdentityPenalty { c: c.value.clone(), diag_weight, off_weight }))
    }

    pub fn permute(&self, x: &Var<B>, perm: &[usize]) -> Result<Var<B>> {
        let y = ops::permute(&x.value, perm)?;
        Ok(self.record(y, &[x], || Op::Permute { perm: perm.to_vec() }))
    }
    pub fn reshape(&self, x: &Var<B>, shape: &[usize]) -> Result<Var<B>> {
        let y = x.value.reshape(shape)?;
        Ok(self.record(y, &[x], || Op::Reshape { in_shape: x.shape().to_vec() }))
    }
    pub fn slice(&self, x: &Var<B>, axis: usize, start: usize, len: usize) -> Result<Var<B>> {
        let y = ops::slice(&x.value, axis, start, len)?;
        Ok(self.record(y, &[x], || Op::Slice { in_shape: x.shape().to_vec(), dtype: x.value.dtype(), axis, start }))
    }
    /// Per row of x [n, l, ..], the rows `idx` [n, k] names (indices in 0..l stored as floats,
    /// constants; repeats allowed): y [n, k, ..] with y[i, j] = x[i, idx[i, j]] (MAE's kept tokens).
    pub fn gather_rows(&self, x: &Var<B>, idx: &crate::Tensor<B>) -> Result<Var<B>> {
        let y = ops::gather_rows(&x.value, idx)?;
        Ok(self.record(y, &[x], || Op::GatherRows { idx: idx.clone(), l: x.shape()[1] }))
    }
    /// The sum of `x` over the ranks of `group` (its gradient: the sum of theirs).
    pub fn all_reduce(&self, x: &Var<B>, group: &crate::dist::collective::Group<B>) -> Result<Var<B>> {
        let y = group.all_reduce_sum(&x.value)?;
        Ok(self.record(y, &[x], || Op::AllReduce { group: group.clone() }))
    }
    /// Every rank's rows of `x`, stacked along axis 0 (its gradient: this rank's rows of the
    /// gathered gradient summed over ranks).
    pub fn all_gather(&self, x: &Var<B>, group: &crate::dist::collective::Group<B>) -> Result<Var<B>> {
        let y = group.all_gather(&x.value)?;
        Ok(self.record(y, &[x], || Op::AllGather { group: group.clone(), rows: x.shape()[0] }))
    }
    pub fn concat(&self, xs: &[&Var<B>], axis: usize) -> Result<Var<B>> {
        let ts: Vec<&crate::Tensor<B>> = xs.iter().map(|v| &v.value).collect();
        let y = ops::concat(&ts, axis)?;
        let sizes = xs.iter().map(|v| v.shape()[axis]).collect();
        Ok(self.record(y, xs, || Op::Concat { axis, sizes }))
    }

    /// x [.., in] . w^T (+ b): PyTorch's Linear with weight [out, in].
    pub fn linear(&self, x: &Var<B>, w: &Var<B>, b: Option<&Var<B>>) -> Result<Var<B>> {
        let (inf, outf) = (w.shape().get(1).copied().unwrap_or(0), w.shape()[0]);
        let lead: Vec<usize> = x.shape()[..x.shape().len().saturating_sub(1)].to_vec();
        let rows = lead.iter().product();
        let x2 = self.reshape(x, &[rows, inf])?;
        let mut y = self.matmul(&x2, w, false, true)?;
        if let Some(b) = b {
            y = self.add(&y, b)?;
        }
        let mut shape = lead;
        shape.push(outf);
        self.reshape(&y, &shape)
    }
}

/// Named shorthands for `Tape::unary`: `tape.relu(x)` is `tape.unary(Unary::Relu, x)`.
macro_rules! unary_shorthands {
    ($($name:ident => $op:ident),* $(,)?) => {
        impl<B: Backend> Tape<B> {
            $(
                #[doc = concat!("`unary(Unary::", stringify!($op), ", x)`.")]
                pub fn $name(&self, x: &Var<B>) -> Result<Var<B>> {
                    self.unary(Unary::$op, x)
                }
            )*
        }
    };
}

unary_shorthands!(relu => Relu, gelu => Gelu, exp => Exp, log => Log, sqrt => Sqrt, sigmoid => Sigmoid, silu => Silu);
