//! AdamW (Loshchilov & Hutter, ICLR 2019) with `torch.optim.AdamW`'s semantics (amsgrad off,
//! no maximise): decoupled weight decay p *= 1 - lr wd, then the bias-corrected Adam step
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps) with m = b1 m + (1 - b1) g and
//! v = b2 v + (1 - b2) g^2. Like torch, each parameter keeps its own step count t (a parameter
//! without a gradient in a step, SwAV's frozen prototypes, neither moves nor counts it). All
//! parameters in one fused backend call (`adamw_step`). A checkpoint saves the moments as
//! `optimizer.exp_avg.<name>` and `optimizer.exp_avg_sq.<name>`, the count as
//! `optimizer.step.<name>`.

use std::collections::BTreeMap;

use super::{Hyper, Optimizer, unknown_state};
use crate::backend::{AdamWHyper, Backend};
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::ops::{self, AdamWSlot};
use crate::tensor::Tensor;

/// torch.optim.AdamW's defaults.
pub const DEFAULT_BETAS: [f64; 2] = [0.9, 0.999];
pub const DEFAULT_EPS: f64 = 1e-8;

/// One parameter's moments and step count.
struct Moments<B: Backend> {
    exp_avg: Tensor<B>,
    exp_avg_sq: Tensor<B>,
    step: u64,
}

pub struct AdamW<B: Backend> {
    pub hyper: AdamWHyper,
    /// Created (zero, step 0) at a parameter's first update.
    state: BTreeMap<ParamId, Moments<B>>,
    /// Moments or counts restored before the others of their parameter (a checkpoint's
    /// tensors load one at a time).
    pending: BTreeMap<ParamId, Restored<B>>,
}

/// The pieces of one parameter's state a checkpoint has restored so far.
struct Restored<B: Backend> {
    exp_avg: Option<Tensor<B>>,
    exp_avg_sq: Option<Tensor<B>>,
    step: Option<u64>,
}

impl<B: Backend> Default for Restored<B> {
    fn default() -> Self {
        Restored { exp_avg: None, exp_avg_sq: None, step: None }
    }
}

const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const STEP: &str = "step";

impl<B: Backend> AdamW<B> {
    /// `betas` (b1, b2) in [0, 1), `eps` > 0.
    pub fn new(betas: [f64; 2], eps: f64) -> Result<Self> {
        check(betas, eps)?;
        Ok(AdamW { hyper: AdamWHyper { beta1: betas[0], beta2: betas[1], eps }, state: BTreeMap::new(), pending: BTreeMap::new() })
    }

    /// A parameter's step count (0 before its first update).
    pub fn step_count(&self, id: ParamId) -> u64 {
        self.state.get(&id).map_or(0, |m| m.step)
    }

    /// Moves a parameter's restored pieces into its state once all three are there.
    fn settle(&mut self, id: ParamId) {
        if let Some(Restored { exp_avg: Some(_), exp_avg_sq: Some(_), step: Some(_) }) = self.pending.get(&id)
            && let Some(Restored { exp_avg: Some(exp_avg), exp_avg_sq: Some(exp_avg_sq), step: Some(step) }) = self.pending.remove(&id)
        {
            self.state.insert(id, Moments { exp_avg, exp_avg_sq, step });
        }
    }
}

/// The check `AdamW::new` makes (and the config's `[optim]` before a run starts).
pub fn check(betas: [f64; 2], eps: f64) -> Result<()> {
    if !(betas.iter().all(|b| (0.0..1.0).contains(b)) && eps > 0.0 && eps.is_finite()) {
        return Err(Error::Config(format!("adamw: betas must be in [0, 1) and eps a positive number (got {betas:?}, {eps})")));
    }
    Ok(())
}

impl<B: Backend> Optimizer<B> for AdamW<B> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn step(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], hyper: Hyper<'_>) -> Result<()> {
        if let Some(id) = self.pending.keys().next() {
            return Err(Error::Invalid {
                op: "adamw",
                msg: format!("the checkpoint restored only part of the state of {}", ps.entry(*id).name),
            });
        }
        for (id, g) in grads {
            if !self.state.contains_key(id) {
                let zeros = || Tensor::zeros(g.backend(), g.shape(), g.dtype());
                self.state.insert(*id, Moments { exp_avg: zeros()?, exp_avg_sq: zeros()?, step: 0 });
            }
        }
        let slots: Vec<AdamWSlot<'_, B>> = grads
            .iter()
            .map(|(id, g)| {
                let (lr, weight_decay) = hyper(*id);
                let m = &self.state[id];
                AdamWSlot {
                    param: ps.get(*id),
                    grad: g,
                    exp_avg: &m.exp_avg,
                    exp_avg_sq: &m.exp_avg_sq,
                    lr,
                    weight_decay,
                    step: m.step + 1,
                }
            })
            .collect();
        ops::adamw_step(&slots, self.hyper)?;
        for (id, _) in grads {
            if let Some(m) = self.state.get_mut(id) {
                m.step += 1;
            }
        }
        Ok(())
    }

    fn state(&self) -> Vec<(&'static str, ParamId, &Tensor<B>)> {
        self.state.iter().flat_map(|(id, m)| [(EXP_AVG, *id, &m.exp_avg), (EXP_AVG_SQ, *id, &m.exp_avg_sq)]).collect()
    }

    fn state_kinds(&self) -> &'static [&'static str] {
        &[EXP_AVG, EXP_AVG_SQ]
    }

    fn load_state(&mut self, kind: &str, id: ParamId, t: Tensor<B>) -> Result<()> {
        let entry = self.pending.entry(id).or_default();
        match kind {
            EXP_AVG => entry.exp_avg = Some(t),
            EXP_AVG_SQ => entry.exp_avg_sq = Some(t),
            _ => return Err(unknown_state("adamw", kind)),
        }
        self.settle(id);
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, ParamId, u64)> {
        self.state.iter().map(|(id, m)| (STEP, *id, m.step)).collect()
    }

    fn counter_kinds(&self) -> &'static [&'static str] {
        &[STEP]
    }

    fn load_counter(&mut self, kind: &str, id: ParamId, count: u64) -> Result<()> {
        if kind != STEP {
            return Err(unknown_state("adamw", kind));
        }
        self.pending.entry(id).or_default().step = Some(count);
        self.settle(id);
        Ok(())
    }
}
