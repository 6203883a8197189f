//! The Backend trait: the complete kernel set. It is the only place that knows about hardware.
//!
//! Designed for an asynchronous GPU: every kernel call receives already-allocated device
//! buffers and returns as soon as the work is enqueued. Nothing waits for the device except
//! `download_*` and `synchronize`. Losses are written to one-element device buffers and their
//! upstream gradients are passed as one-element buffers too, so a training step never has to
//! read back. Shapes are validated once, in `ops.rs`; a kernel trusts the dims it is given.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::error::Result;
use crate::tensor::DType;

/// C[b] (m x n) = op(A[b]) (m x k) . op(B[b]) (k x n), every operand row-major and contiguous.
/// With `trans_a`, A[b] is stored as (k x m); with `trans_b`, B[b] is stored as (n x k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// NHWC convolution: x [n, h, w, c_in], weight [c_out, kh, kw, c_in / groups], y [n, oh, ow, c_out].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

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

/// Scaled dot-product attention over `bh` independent (batch x head) slices:
/// q [bh, tq, d], k and v [bh, tk, d], o [bh, tq, d], lse (log-sum-exp of each score row) [bh, tq].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub bh: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub scale: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Relu,
    /// The exact (erf) GELU, PyTorch's and timm's default.
    Gelu,
    Exp,
    /// The natural logarithm.
    Log,
    Sqrt,
    /// 1 / (1 + exp(-x)): squeeze-excitation gates.
    Sigmoid,
    /// x sigmoid(x) (swish): EfficientNet's activation.
    Silu,
    /// Rounds to the nearest bfloat16 (ties to even; NaN stays NaN), kept in the tensor's dtype:
    /// the rounding point of `Precision::Bf16` around convolutions, matmuls and attention. Its
    /// gradient is the incoming gradient rounded the same way, as a bf16 tensor's gradient is.
    RoundBf16,
}

/// What convolutions, matmuls and attention compute in (`precision` in the config).
/// `Bf16`: their operands and results are rounded to bfloat16 (FP32 accumulation), and so are
/// the gradients through them, as under PyTorch's bf16 autocast; weights, optimiser state,
/// batch-norm statistics, losses and softmax stay FP32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(crate::Error::Config(format!("precision {other:?}: expected \"fp32\" or \"bf16\""))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Mul,
    Sub,
    Div,
}

/// A max-pool window over NHWC: x [n, h, w, c] -> y [n, oh, ow, c].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

/// A tensor viewed as [outer, axis, inner]; the kernel works along `axis`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisDims {
    pub outer: usize,
    pub axis: usize,
    pub inner: usize,
}

/// The range [start, start + len) of the middle axis of [outer, axis, inner].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceDims {
    pub outer: usize,
    pub axis: usize,
    pub start: usize,
    pub len: usize,
    pub inner: usize,
}

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
pub fn sgd_on_host<'a, B: Backend>(
    b: &B,
    tensors: &[SgdTensor<'a, B::Storage>],
    on_device: Option<SgdOnDevice<'_, B::Storage>>,
) -> Result<Option<Vec<SgdTensor<'a, B::Storage>>>> {
    let copy = |t: &SgdTensor<'a, B::Storage>, lr, weight_decay| SgdTensor { lr, weight_decay, ..*t };
    let Some(d) = on_device else { return Ok(Some(tensors.iter().map(|t| copy(t, t.lr, t.weight_decay)).collect())) };
    if b.download_f32(d.gate)?.iter().take(d.gate_len).any(|v| !v.is_finite()) {
        return Ok(None);
    }
    let hyper = b.download_f32(d.hyper)?;
    if hyper.len() < 2 * tensors.len() {
        return Err(crate::error::Error::Invalid { op: "sgd_step", msg: format!("{} step values for {} tensors", hyper.len(), tensors.len()) });
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

/// A graph recorded by `Backend::graph_begin` / `graph_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub u64);

pub trait Backend: Clone + Send + Sync + 'static {
    /// A device buffer. It carries its own dtype and length.
    type Storage: Send + Sync;

    /// Human-readable device name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;
    fn supports(&self, dtype: DType) -> bool;
    /// The precision the tape runs convolutions, matmuls and attention in (see `Precision`).
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
    /// Whether this backend's matmul and convolution kernels (all passes) round their operands
    /// and results to bf16 themselves under `Precision::Bf16`, so the tape adds no rounding
    /// points around them (the same values, without a pass over each tensor).
    fn rounds_gemm_to_bf16(&self) -> bool {
        false
    }

    // ---- memory --------------------------------------------------------------------------
    /// A buffer with unspecified contents (GPU backends draw it from a pool).
    fn alloc(&self, len: usize, dtype: DType) -> Result<Self::Storage>;
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<Self::Storage>;
    fn upload_f64(&self, data: &[f64], dtype: DType) -> Result<Self::Storage> {
        let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.upload_f32(&v, dtype)
    }
    /// Waits for all queued work, then copies the buffer to the host.
    fn download_f32(&self, s: &Self::Storage) -> Result<Vec<f32>>;
    fn download_f64(&self, s: &Self::Storage) -> Result<Vec<f64>> {
        Ok(self.download_f32(s)?.into_iter().map(f64::from).collect())
    }
    fn fill(&self, s: &Self::Storage, value: f32) -> Result<()>;
    fn copy(&self, src: &Self::Storage, dst: &Self::Storage) -> Result<()>;
    fn synchronize(&self) -> Result<()>;

    // ---- graphs (CUDA graphs) --------------------------------------------------------------
    /// Starts recording this backend's work as a graph to replay with one launch: true if it
    /// has graphs (CUDA), false (and nothing recorded) otherwise. Until `graph_end`, work is
    /// recorded rather than run, and uploads, downloads and synchronisation are errors.
    fn graph_begin(&self) -> Result<bool> {
        Ok(false)
    }
    /// Ends the recording begun by `graph_begin`; `keep` false discards it (an error inside).
    fn graph_end(&self, keep: bool) -> Result<GraphId> {
        let _ = keep;
        Err(crate::error::Error::Invalid { op: "graph", msg: format!("{} has no graphs", self.name()) })
    }
    /// Runs a recorded graph.
    fn graph_replay(&self, g: GraphId) -> Result<()> {
        let _ = g;
        Err(crate::error::Error::Invalid { op: "graph", msg: format!("{} has no graphs", self.name()) })
    }
    /// The kernel launches a graph holds.
    fn graph_launches(&self, g: GraphId) -> usize {
        let _ = g;
        0
    }
    /// Frees a graph and the memory only it used.
    fn graph_release(&self, g: GraphId) {
        let _ = g;
    }

    // ---- matmul --------------------------------------------------------------------------
    fn matmul(&self, a: &Self::Storage, b: &Self::Storage, c: &Self::Storage, d: &MatmulDims) -> Result<()>;

    // ---- conv ----------------------------------------------------------------------------
    fn conv2d_fwd(&self, x: &Self::Storage, w: &Self::Storage, y: &Self::Storage, d: &Conv2dDims) -> Result<()>;
    fn conv2d_bwd_data(&self, dy: &Self::Storage, w: &Self::Storage, dx: &Self::Storage, d: &Conv2dDims) -> Result<()>;
    fn conv2d_bwd_weight(&self, x: &Self::Storage, dy: &Self::Storage, dw: &Self::Storage, d: &Conv2dDims) -> Result<()>;

    // ---- norm ----------------------------------------------------------------------------
    /// Training batch norm: batch statistics (biased variance for normalising), saves mean and
    /// 1/sqrt(var + eps) per channel for backward, updates running statistics when given;
    /// `tail` is applied in the same output pass.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_train(&self, x: &Self::Storage, bn: BnTrain<'_, Self::Storage>, d: &NormDims) -> Result<()>;
    /// A convolution whose output goes straight into training batch norm (a ResNet's conv + BN):
    /// `conv_out` = conv2d(x, w) (kept: batch norm's backward reads it), then
    /// batchnorm_fwd_train of it. A backend may fuse the two (CUDA sums the statistics in the
    /// convolution's epilogue instead of reading its output again); this default runs them one
    /// after the other.
    fn conv2d_batchnorm_fwd_train(
        &self,
        x: &Self::Storage,
        w: &Self::Storage,
        conv_out: &Self::Storage,
        cd: &Conv2dDims,
        bn: BnTrain<'_, Self::Storage>,
        nd: &NormDims,
    ) -> Result<()> {
        self.conv2d_fwd(x, w, conv_out, cd)?;
        self.batchnorm_fwd_train(conv_out, bn, nd)
    }
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_eval(
        &self,
        x: &Self::Storage,
        gamma: Option<&Self::Storage>,
        beta: Option<&Self::Storage>,
        running_mean: &Self::Storage,
        running_var: &Self::Storage,
        tail: BnTail<'_, Self::Storage>,
        y: &Self::Storage,
        d: &NormDims,
    ) -> Result<()>;
    /// dgamma / dbeta are written when given (affine batch norm). `relu_out`: the forward output
    /// when its tail ended in a ReLU, so dy counts only where it is positive; that masked dy is
    /// also the residual's gradient, written to `dresidual` when given.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd(
        &self,
        x: &Self::Storage,
        dy: &Self::Storage,
        relu_out: Option<&Self::Storage>,
        gamma: Option<&Self::Storage>,
        save_mean: &Self::Storage,
        save_invstd: &Self::Storage,
        dx: &Self::Storage,
        dresidual: Option<&Self::Storage>,
        dgamma: Option<&Self::Storage>,
        dbeta: Option<&Self::Storage>,
        d: &NormDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        x: &Self::Storage,
        gamma: &Self::Storage,
        beta: &Self::Storage,
        y: &Self::Storage,
        save_mean: &Self::Storage,
        save_rstd: &Self::Storage,
        d: &NormDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        x: &Self::Storage,
        dy: &Self::Storage,
        gamma: &Self::Storage,
        save_mean: &Self::Storage,
        save_rstd: &Self::Storage,
        dx: &Self::Storage,
        dgamma: &Self::Storage,
        dbeta: &Self::Storage,
        d: &NormDims,
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

    // ---- attention -----------------------------------------------------------------------
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        o: &Self::Storage,
        lse: &Self::Storage,
        d: &AttnDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        o: &Self::Storage,
        lse: &Self::Storage,
        dout: &Self::Storage,
        dq: &Self::Storage,
        dk: &Self::Storage,
        dv: &Self::Storage,
        d: &AttnDims,
    ) -> Result<()>;

    // ---- elementwise and reductions ------------------------------------------------------
    fn unary_fwd(&self, op: Unary, x: &Self::Storage, y: &Self::Storage, n: usize) -> Result<()>;
    fn unary_bwd(&self, op: Unary, x: &Self::Storage, dy: &Self::Storage, dx: &Self::Storage, n: usize) -> Result<()>;
    /// out[i] = a[i] op b[i % b_len]: `b` repeats over the leading axes of `a`.
    fn binary(&self, op: Binary, a: &Self::Storage, b: &Self::Storage, out: &Self::Storage, n: usize, b_len: usize) -> Result<()>;
    /// y = alpha * x
    fn scale(&self, x: &Self::Storage, y: &Self::Storage, alpha: f32, n: usize) -> Result<()>;
    /// y[o, i] = sum_a x[o, a, i], in a fixed order.
    fn sum_axis(&self, x: &Self::Storage, y: &Self::Storage, d: &AxisDims) -> Result<()>;
    /// y[o, a, i] = x[o, a, i] s[o, i]: x [outer = n, axis = h w, inner = c] scaled per sample and
    /// channel by s [n, c] (squeeze-excitation's gate).
    fn channel_scale(&self, x: &Self::Storage, s: &Self::Storage, y: &Self::Storage, d: &AxisDims) -> Result<()>;

    // ---- pooling -------------------------------------------------------------------------
    fn maxpool2d_fwd(&self, x: &Self::Storage, y: &Self::Storage, d: &PoolDims) -> Result<()>;
    /// The gradient goes to the first maximum of each window (PyTorch's choice), found again from x.
    fn maxpool2d_bwd(&self, x: &Self::Storage, dy: &Self::Storage, dx: &Self::Storage, d: &PoolDims) -> Result<()>;
    /// x [n, hw, c] -> y [n, c]; `d.outer` = n, `d.axis` = hw, `d.inner` = c.
    fn avgpool_global_fwd(&self, x: &Self::Storage, y: &Self::Storage, d: &AxisDims) -> Result<()>;
    fn avgpool_global_bwd(&self, dy: &Self::Storage, dx: &Self::Storage, d: &AxisDims) -> Result<()>;

    // ---- losses --------------------------------------------------------------------------
    /// Mean cross-entropy of logits [rows, channels] against class indices stored as floats.
    fn cross_entropy_fwd(
        &self,
        logits: &Self::Storage,
        labels: &Self::Storage,
        loss: &Self::Storage,
        rows: usize,
        classes: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_bwd(
        &self,
        logits: &Self::Storage,
        labels: &Self::Storage,
        dloss: &Self::Storage,
        dlogits: &Self::Storage,
        rows: usize,
        classes: usize,
    ) -> Result<()>;
    /// loss = -mean_i cos(p_i, z_i) over rows of p, z [rows, dim]; eps clamps each norm
    /// (F.normalize's rule: x / max(||x||, eps)).
    fn cosine_loss_fwd(&self, p: &Self::Storage, z: &Self::Storage, loss: &Self::Storage, rows: usize, dim: usize, eps: f32) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn cosine_loss_bwd(
        &self,
        p: &Self::Storage,
        z: &Self::Storage,
        dloss: &Self::Storage,
        dp: &Self::Storage,
        dz: Option<&Self::Storage>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;

    /// Mean cross-entropy of logits [rows, classes] against soft targets q [rows, classes]:
    /// mean_r sum_j q_rj (logsumexp(x_r) - x_rj).
    fn soft_cross_entropy_fwd(&self, logits: &Self::Storage, q: &Self::Storage, loss: &Self::Storage, rows: usize, classes: usize) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn soft_cross_entropy_bwd(
        &self,
        logits: &Self::Storage,
        q: &Self::Storage,
        dloss: &Self::Storage,
        dlogits: &Self::Storage,
        rows: usize,
        classes: usize,
    ) -> Result<()>;
    /// NT-Xent over similarities sim [rows, rows] of rows carrying `groups` [rows] (ids stored
    /// as floats): loss = mean_r [lse_{j != r}(sim_rj / T) - lse_{j != r, g_j = g_r}(sim_rj / T)].
    /// One pass over sim; it is never copied, scaled or masked in memory.
    fn nt_xent_fwd(&self, sim: &Self::Storage, groups: &Self::Storage, loss: &Self::Storage, rows: usize, temperature: f32) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn nt_xent_bwd(
        &self,
        sim: &Self::Storage,
        groups: &Self::Storage,
        dloss: &Self::Storage,
        dsim: &Self::Storage,
        rows: usize,
        temperature: f32,
    ) -> Result<()>;
    /// loss = diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2 for c [d, d].
    fn identity_penalty_fwd(&self, c: &Self::Storage, loss: &Self::Storage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn identity_penalty_bwd(
        &self,
        c: &Self::Storage,
        dloss: &Self::Storage,
        dc: &Self::Storage,
        d: usize,
        diag_weight: f32,
        off_weight: f32,
    ) -> Result<()>;

    // ---- optimiser -----------------------------------------------------------------------
    /// One fused SGD-momentum-weight-decay update over many tensors (one launch on a GPU);
    /// with `on_device`, the learning rates and weight decays come from device memory and a
    /// non-finite gate skips the update (see SgdOnDevice).
    fn sgd_step(&self, tensors: &[SgdTensor<'_, Self::Storage>], momentum: f32, on_device: Option<SgdOnDevice<'_, Self::Storage>>) -> Result<()>;
    /// One fused in-place EMA update over many tensors (one launch on a GPU):
    /// target = tau * target + (1 - tau) * source.
    fn ema_update(&self, tensors: &[EmaTensor<'_, Self::Storage>], tau: f32) -> Result<()>;

    // ---- layout --------------------------------------------------------------------------
    /// y = x.permute(perm), written contiguously. `shape` is x's shape.
    fn permute(&self, x: &Self::Storage, y: &Self::Storage, shape: &[usize], perm: &[usize]) -> Result<()>;
    /// y [outer, len, inner] = x [outer, start..start+len, inner]
    fn slice(&self, x: &Self::Storage, y: &Self::Storage, d: &SliceDims) -> Result<()>;
    /// dst [outer, start..start+len, inner] = src [outer, len, inner]; the rest of dst is kept.
    fn slice_assign(&self, src: &Self::Storage, dst: &Self::Storage, d: &SliceDims) -> Result<()>;
}
