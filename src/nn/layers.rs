//! Conv2d, BatchNorm (1d and 2d are one layer: channels are last), Linear, LayerNorm,
//! multi-head self-attention and the transformer MLP.

use super::init::Init;
use super::params::{Ctx, Kind, Layout, ParamId, ParamStore};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

pub struct Conv2d {
    pub w: ParamId,
    pub b: Option<ParamId>,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl Conv2d {
    /// `weight_init` None = PyTorch's default (uniform, fan-in); the bias always uses it.
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: Backend>(
        ps: &mut ParamStore<B>,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
        weight_init: Option<Init>,
    ) -> Result<Self> {
        let fan_in = c_in / groups * k * k;
        let init = weight_init.unwrap_or(Init::UniformFanIn(fan_in));
        let w = ps.add(&join(prefix, "weight"), &[c_out, c_in / groups, k, k], init, Kind::Param, Layout::ConvWeight)?;
        let b =
            if bias { Some(ps.add(&join(prefix, "bias"), &[c_out], Init::UniformFanIn(fan_in), Kind::Param, Layout::Same)?) } else { None };
        Ok(Conv2d { w, b, stride, pad, groups })
    }
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let y = cx.tape.conv2d(x, &cx.param(self.w), [self.stride; 2], [self.pad; 2], self.groups)?;
        match self.b {
            Some(b) => cx.tape.add(&y, &cx.param(b)),
            None => Ok(y),
        }
    }
}

/// Batch norm over channels-last data: BatchNorm2d on [n, h, w, c], BatchNorm1d on [n, c].
pub struct BatchNorm {
    pub affine: Option<(ParamId, ParamId)>,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm {
    /// `gamma_init` = 0 gives torchvision's zero_init_residual.
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, c: usize, affine: bool, gamma_init: f64) -> Result<Self> {
        let affine = if affine {
            let g = ps.add(&join(prefix, "weight"), &[c], Init::Constant(gamma_init), Kind::Param, Layout::Same)?;
            let b = ps.add(&join(prefix, "bias"), &[c], Init::Zeros, Kind::Param, Layout::Same)?;
            Some((g, b))
        } else {
            None
        };
        let running_mean = ps.add(&join(prefix, "running_mean"), &[c], Init::Zeros, Kind::Buffer, Layout::Same)?;
        let running_var = ps.add(&join(prefix, "running_var"), &[c], Init::Ones, Kind::Buffer, Layout::Same)?;
        Ok(BatchNorm { affine, running_mean, running_var, eps: 1e-5, momentum: 0.1 })
    }

    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        self.forward_tail(cx, x, None, false)
    }

    /// relu?(bn(conv(x)) + residual?): in training, a bias-free convolution and this norm run as
    /// one backend call (the tape's conv2d_batchnorm_train); otherwise one after the other.
    pub fn forward_conv<B: Backend>(&self, cx: &Ctx<B>, conv: &Conv2d, x: &Var<B>, residual: Option<&Var<B>>, relu: bool) -> Result<Var<B>> {
        if !cx.train || conv.b.is_some() || synced(cx).is_some() {
            return self.forward_tail(cx, &conv.forward(cx, x)?, residual, relu);
        }
        let (rm, rv) = (cx.params.get(self.running_mean), cx.params.get(self.running_var));
        let affine = self.affine.map(|(g, b)| (cx.param(g), cx.param(b)));
        let (w, s, p) = (cx.param(conv.w), [conv.stride; 2], [conv.pad; 2]);
        let affine = affine.as_ref().map(|(g, b)| (g, b));
        cx.tape.conv2d_batchnorm_train(x, &w, s, p, conv.groups, affine, Some((rm, rv, self.momentum)), self.eps, residual, relu)
    }

    /// relu?(bn(x) + residual?) in one pass (the ops' fused tail).
    pub fn forward_tail<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>, residual: Option<&Var<B>>, relu: bool) -> Result<Var<B>> {
        let (rm, rv) = (cx.params.get(self.running_mean), cx.params.get(self.running_var));
        let affine = self.affine.map(|(g, b)| (cx.param(g), cx.param(b)));
        if let (true, Some(group)) = (cx.train, synced(cx)) {
            return self.forward_synced(cx, x, affine.as_ref().map(|(g, b)| (g, b)), residual, relu, group);
        }
        if cx.train {
            let running = Some((rm, rv, self.momentum));
            return cx.tape.batchnorm_train_tail(x, affine.as_ref().map(|(g, b)| (g, b)), running, self.eps, residual, relu);
        }
        let needs_grad = x.requires_grad()
            || residual.is_some_and(|r| r.requires_grad())
            || affine.as_ref().is_some_and(|(g, b)| g.requires_grad() || b.requires_grad());
        if needs_grad && cx.tape.is_recording() {
            return Err(Error::Autograd("eval-mode batch norm does not support gradients; freeze the layer or use train mode".into()));
        }
        let (g, b) = (affine.as_ref().map(|a| &a.0.value), affine.as_ref().map(|a| &a.1.value));
        let y = ops::batchnorm_eval_tail(&x.value, g, b, rm, rv, self.eps, residual.map(|r| &r.value), relu)?;
        Ok(Var::constant(y))
    }
}

/// The group whose ranks share batch-norm statistics (`sync_bn` with more than one rank).
fn synced<'a, B: Backend>(cx: &'a Ctx<B>) -> Option<&'a crate::dist::collective::Group<B>> {
    cx.params.replicas().filter(|r| r.sync_bn).map(|r| &r.group)
}

impl BatchNorm {
    /// Training-mode batch norm over every rank's rows (SyncBatchNorm), from tape ops: the
    /// per-channel sums and the sums of squared deviations are all-reduced, so the statistics,
    /// and through the all-reduce's gradient the backward pass, are the global batch's. The
    /// running statistics move as the fused op moves them (unbiased variance), on every rank.
    fn forward_synced<B: Backend>(
        &self,
        cx: &Ctx<B>,
        x: &Var<B>,
        affine: Option<(&Var<B>, &Var<B>)>,
        residual: Option<&Var<B>>,
        relu: bool,
        group: &crate::dist::collective::Group<B>,
    ) -> Result<Var<B>> {
        use crate::backend::Unary;
        use crate::tensor::Tensor;
        let t = cx.tape;
        let (b, dt) = (x.value.backend(), x.value.dtype());
        let c = *x.shape().last().unwrap_or(&1);
        let rows = x.value.numel() / c.max(1);
        let n = (rows * group.world()) as f32;
        let count = Var::constant(Tensor::full(b, &[c], n, dt)?);
        let flat = t.reshape(x, &[rows, c])?;
        let mean = t.div(&t.all_reduce(&t.sum_axis(&flat, 0)?, group)?, &count)?;
        let dev = t.sub(&flat, &mean)?;
        let var = t.div(&t.all_reduce(&t.sum_axis(&t.mul(&dev, &dev)?, 0)?, group)?, &count)?;
        let eps = Var::constant(Tensor::full(b, &[c], self.eps, dt)?);
        let mut y = t.div(&dev, &t.unary(Unary::Sqrt, &t.add(&var, &eps)?)?)?;
        if let Some((g, beta)) = affine {
            y = t.add(&t.mul(&y, g)?, beta)?;
        }
        let mut y = t.reshape(&y, x.shape())?;
        if let Some(r) = residual {
            y = t.add(&y, r)?;
        }
        if relu {
            y = t.unary(Unary::Relu, &y)?;
        }
        // The running statistics on the host, by the CPU backend's own update (a read of 2 x c
        // values per layer and step).
        let (rm, rv) = (cx.params.get(self.running_mean), cx.params.get(self.running_var));
        let (mut m_host, mut v_host) = (rm.to_f64()?, rv.to_f64()?);
        let rows_global = rows * group.world();
        crate::backend::cpu::update_running::<f64>(&mut m_host, &mut v_host, &mean.value.to_f64()?, &var.value.to_f64()?, rows_global, self.momentum);
        ops::slice_assign(rm, &Tensor::from_f64(b, &m_host, &[c], rm.dtype())?, 0, 0)?;
        ops::slice_assign(rv, &Tensor::from_f64(b, &v_host, &[c], rv.dtype())?, 0, 0)?;
        Ok(y)
    }
}

pub struct Linear {
    pub w: ParamId,
    pub b: Option<ParamId>,
}

impl Linear {
    /// `weight_init` None = PyTorch's default; `bias_init` None = PyTorch's default.
    pub fn new<B: Backend>(
        ps: &mut ParamStore<B>,
        prefix: &str,
        fan_in: usize,
        fan_out: usize,
        bias: bool,
        weight_init: Option<Init>,
        bias_init: Option<Init>,
    ) -> Result<Self> {
        let w = ps.add(
            &join(prefix, "weight"),
            &[fan_out, fan_in],
            weight_init.unwrap_or(Init::UniformFanIn(fan_in)),
            Kind::Param,
            Layout::Same,
        )?;
        let b = if bias {
            Some(ps.add(&join(prefix, "bias"), &[fan_out], bias_init.unwrap_or(Init::UniformFanIn(fan_in)), Kind::Param, Layout::Same)?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let b = self.b.map(|b| cx.param(b));
        cx.tape.linear(x, &cx.param(self.w), b.as_ref())
    }
}

pub struct LayerNorm {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, c: usize, eps: f32) -> Result<Self> {
        let gamma = ps.add(&join(prefix, "weight"), &[c], Init::Ones, Kind::Param, Layout::Same)?;
        let beta = ps.add(&join(prefix, "bias"), &[c], Init::Zeros, Kind::Param, Layout::Same)?;
        Ok(LayerNorm { gamma, beta, eps })
    }
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        cx.tape.layernorm(x, &cx.param(self.gamma), &cx.param(self.beta), self.eps)
    }
}

/// timm's `Attention`: fused qkv projection, scaled dot-product attention per head, output proj.
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, dim: usize, heads: usize, init: Option<Init>) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::Invalid { op: "attention", msg: format!("dim {dim} is not divisible by {heads} heads") });
        }
        let bias0 = init.map(|_| Init::Zeros);
        Ok(Attention {
            qkv: Linear::new(ps, &join(prefix, "qkv"), dim, 3 * dim, true, init, bias0)?,
            proj: Linear::new(ps, &join(prefix, "proj"), dim, dim, true, init, bias0)?,
            heads,
        })
    }
    /// x [b, t, dim] -> [b, t, dim]
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let (b, n, dim) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (h, hd) = (self.heads, dim / self.heads);
        let qkv = self.qkv.forward(cx, x)?; // [b, n, 3 dim]
        let qkv = t.permute(&t.reshape(&qkv, &[b, n, 3, h, hd])?, &[2, 0, 3, 1, 4])?; // [3, b, h, n, hd]
        let part = |i: usize| -> Result<Var<B>> { t.reshape(&t.slice(&qkv, 0, i, 1)?, &[b, h, n, hd]) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let o = t.attention(&q, &k, &v, (hd as f32).powf(-0.5))?; // [b, h, n, hd]
        let o = t.reshape(&t.permute(&o, &[0, 2, 1, 3])?, &[b, n, dim])?;
        self.proj.forward(cx, &o)
    }
}

/// timm's `Mlp`: fc1 -> GELU -> fc2.
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, dim: usize, hidden: usize, init: Option<Init>) -> Result<Self> {
        let bias0 = init.map(|_| Init::Zeros);
        Ok(Mlp {
            fc1: Linear::new(ps, &join(prefix, "fc1"), dim, hidden, true, init, bias0)?,
            fc2: Linear::new(ps, &join(prefix, "fc2"), hidden, dim, true, init, bias0)?,
        })
    }
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let h = cx.tape.gelu(&self.fc1.forward(cx, x)?)?;
        self.fc2.forward(cx, &h)
    }
}
