//! SGD with momentum and L2 weight decay, PyTorch's semantics (dampening 0, no Nesterov):
//! buf = m buf + (g + wd p); p -= lr buf. All parameters in one fused backend call.

use std::collections::BTreeMap;

use super::{Hyper, Optimizer, unknown_state};
use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::ops::{self, SgdSlot};
use crate::tensor::Tensor;

pub struct Sgd<B: Backend> {
    pub momentum: f32,
    /// One momentum buffer per parameter, created (zero) at its first update.
    bufs: BTreeMap<ParamId, Tensor<B>>,
}

impl<B: Backend> Sgd<B> {
    pub fn new(momentum: f32) -> Self {
        Sgd { momentum, bufs: BTreeMap::new() }
    }
}

const MOMENTUM: &str = "momentum";

impl<B: Backend> Optimizer<B> for Sgd<B> {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn step(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], hyper: Hyper<'_>) -> Result<()> {
        for (id, g) in grads {
            if !self.bufs.contains_key(id) {
                self.bufs.insert(*id, Tensor::zeros(g.backend(), g.shape(), g.dtype())?);
            }
        }
        let slots: Vec<SgdSlot<'_, B>> = grads
            .iter()
            .map(|(id, g)| {
                let (lr, weight_decay) = hyper(*id);
                SgdSlot { param: ps.get(*id), grad: g, momentum_buf: &self.bufs[id], lr, weight_decay }
            })
            .collect();
        ops::sgd_step(&slots, self.momentum)
    }

    fn step_on_device(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], hyper: &Tensor<B>, gate: &Tensor<B>) -> Result<bool> {
        // A buffer made now would be zeroed by every replay.
        if !grads.iter().all(|(id, _)| self.bufs.contains_key(id)) {
            return Ok(false);
        }
        let slots: Vec<SgdSlot<'_, B>> =
            grads.iter().map(|(id, g)| SgdSlot { param: ps.get(*id), grad: g, momentum_buf: &self.bufs[id], lr: 0.0, weight_decay: 0.0 }).collect();
        ops::sgd_step_on_device(&slots, self.momentum, hyper, gate)?;
        Ok(true)
    }

    fn state(&self) -> Vec<(&'static str, ParamId, &Tensor<B>)> {
        self.bufs.iter().map(|(id, t)| (MOMENTUM, *id, t)).collect()
    }

    fn state_kinds(&self) -> &'static [&'static str] {
        &[MOMENTUM]
    }

    fn load_state(&mut self, kind: &str, id: ParamId, t: Tensor<B>) -> Result<()> {
        if kind != MOMENTUM {
            return Err(unknown_state("sgd", kind));
        }
        self.bufs.insert(id, t);
        Ok(())
    }
}
