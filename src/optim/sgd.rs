//! SGD with momentum and decoupled-from-nothing (PyTorch-style, L2) weight decay.

use std::collections::BTreeMap;

use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::ops::{self, SgdSlot};
use crate::tensor::Tensor;

pub struct Sgd<B: Backend> {
    pub momentum: f32,
    /// One momentum buffer per parameter, created at its first update.
    bufs: BTreeMap<ParamId, Tensor<B>>,
}

impl<B: Backend> Sgd<B> {
    pub fn new(momentum: f32) -> Self {
        Sgd { momentum, bufs: BTreeMap::new() }
    }

    /// Updates every parameter that has a gradient, in place; `lr_wd(id)` gives its learning
    /// rate and weight decay (parameter groups: a predictor with a fixed lr, LARS exclusions).
    pub fn step(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], lr_wd: impl Fn(ParamId) -> (f32, f32)) -> Result<()> {
        for (id, g) in grads {
            if !self.bufs.contains_key(id) {
                self.bufs.insert(*id, Tensor::zeros(g.backend(), g.shape(), g.dtype())?);
            }
        }
        let slots: Vec<SgdSlot<'_, B>> = grads
            .iter()
            .map(|(id, g)| {
                let (lr, weight_decay) = lr_wd(*id);
                SgdSlot { param: ps.get(*id), grad: g, momentum_buf: &self.bufs[id], lr, weight_decay }
            })
            .collect();
        ops::sgd_step(&slots, self.momentum)
    }

    /// The momentum buffers, for checkpoints.
    pub fn buffers(&self) -> &BTreeMap<ParamId, Tensor<B>> {
        &self.bufs
    }
    pub fn set_buffer(&mut self, id: ParamId, t: Tensor<B>) {
        self.bufs.insert(id, t);
    }
}
