//! MLP heads (projectors, predictors) as PyTorch `nn.Sequential`s: names are `<prefix>.<index>.*`
//! with the Sequential's indices, so heads load into the reference implementations.

use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{BatchNorm, Ctx, Init, Linear, ParamStore};

pub enum Layer {
    Linear(Linear),
    BatchNorm(BatchNorm),
    Act(Act),
}

/// A head layer's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    /// DINO's head.
    Gelu,
}

/// One step of a head: a linear layer, optionally followed by BN (affine or not) and an
/// activation.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    pub out: usize,
    pub bias: bool,
    /// None: no BN; Some(affine).
    pub bn: Option<bool>,
    pub act: Act,
}

pub struct Head {
    layers: Vec<Layer>,
    pub out_dim: usize,
}

impl Head {
    /// PyTorch's default Linear init (uniform in 1/sqrt(fan_in)).
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, in_dim: usize, specs: &[LayerSpec]) -> Result<Self> {
        Self::with_init(ps, prefix, in_dim, specs, None)
    }

    /// Every Linear's (weight, bias) drawn from `init` when given (DINO's trunc-normal 0.02 and
    /// zero biases); batch norms keep gamma 1, beta 0.
    pub fn with_init<B: Backend>(
        ps: &mut ParamStore<B>,
        prefix: &str,
        in_dim: usize,
        specs: &[LayerSpec],
        init: Option<(Init, Init)>,
    ) -> Result<Self> {
        let mut layers = Vec::new();
        let mut dim = in_dim;
        for s in specs {
            let i = layers.len();
            let (w, b) = (init.map(|(w, _)| w), init.map(|(_, b)| b));
            layers.push(Layer::Linear(Linear::new(ps, &format!("{prefix}.{i}"), dim, s.out, s.bias, w, b)?));
            if let Some(affine) = s.bn {
                let i = layers.len();
                layers.push(Layer::BatchNorm(BatchNorm::new(ps, &format!("{prefix}.{i}"), s.out, affine, 1.0)?));
            }
            if s.act != Act::None {
                layers.push(Layer::Act(s.act));
            }
            dim = s.out;
        }
        Ok(Head { layers, out_dim: dim })
    }

    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let mut h = x.clone();
        for l in &self.layers {
            h = match l {
                Layer::Linear(lin) => lin.forward(cx, &h)?,
                Layer::BatchNorm(bn) => bn.forward(cx, &h)?,
                Layer::Act(Act::Relu) => cx.tape.relu(&h)?,
                Layer::Act(Act::Gelu) => cx.tape.gelu(&h)?,
                Layer::Act(Act::None) => h,
            };
        }
        Ok(h)
    }
}
